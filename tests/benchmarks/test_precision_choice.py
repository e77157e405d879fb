"""benchmarks/precision_choice.py: the probe's decision and the fast path's rows, on a tiny model."""
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import precision_choice  # noqa: E402


def test_rows_name_auto_and_compare_to_fp32(monkeypatch, tmp_path):
    monkeypatch.setenv('FISHZOO_PRECISION_PROBE', 'on')
    monkeypatch.setenv('FISHZOO_CACHE', str(tmp_path))
    monkeypatch.setattr(precision_choice, 'rate', lambda run, x, seconds=2.0: (run(x), 10.0)[1])
    result = precision_choice.training_rows('fishnet_s64', batch=2, rounds=1)
    assert result['auto'] in ('fp32', 'bf16') and [r['path'] for r in result['rows']] == [
        'SGD step fp32', 'SGD step bf16 autocast'] and result['rows'][0]['vs_fp32'] == 1.0


@pytest.mark.slow
def test_predict_speed_prints_rates_against_the_fast_path(capsys, monkeypatch):
    import predict_speed
    monkeypatch.setattr(sys, 'argv', ['predict_speed.py', '--images', '48', '--batch-size', '16'])
    assert predict_speed.main() == 0
    out = capsys.readouterr().out
    assert '| optimize_for_inference() (' in out and '| predict(compile=True) |' in out
    assert '| predict(compile=False) |' in out and 'in a fresh process:' in out
