"""benchmarks/training_speed.py --steps: both precisions of a tiny model, and the table naming the CPU."""
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import training_speed  # noqa: E402


def test_step_benchmark_measures_fp32_and_bf16(fake_cpu):
    fake_cpu('amx')
    result = training_speed.step_benchmark(['fishnet_s64'], batch=2, size=32, rounds=1, min_seconds=0.01)
    assert [(r['model'], r['precision']) for r in result['rows']] == [('fishnet_s64', 'fp32'),
                                                                      ('fishnet_s64', 'bf16 autocast')]
    assert all(r['img_per_s'] > 0 for r in result['rows'])
    table = training_speed.step_table(result)
    assert 'CPU features: AMX-BF16, AMX-INT8, AVX512-BF16, VNNI; `--mixed-precision auto` picks the row marked' in table
    # the suite decides by the measured table (probe off): bf16 on an AMX CPU
    assert '| fishnet_s64 | bf16 autocast (*auto*) |' in table and '| fishnet_s64 | fp32 |' in table
    assert table.splitlines()[-2].endswith('| 1.00 |')
