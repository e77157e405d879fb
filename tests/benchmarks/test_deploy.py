"""The deployment benchmark's targets and table from recorded rows (its timings are not checked here: the
full run takes minutes and performance claims live in its own output)."""
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.deploy

BENCHMARKS = Path(__file__).resolve().parents[2] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import deploy  # noqa: E402
import measure  # noqa: E402


def _row(name, by, img_per_s, latency, kernels='-'):
    return dict(model='fishnet150', size=224, name=name, by=by, setup_seconds=1.0, throughput=[img_per_s],
                img_per_s=img_per_s, latency_median_ms=latency, latency_p90_ms=latency * 1.1, kernels=kernels)


ROWS = [
    _row(deploy.BASELINE, 'fishzoo', 10.0, 100.0),
    _row(deploy.AUTO.format('torch, bf16'), 'fishzoo', 40.0, 25.0, 'AMX 150/150 conv'),
    _row(deploy.BF16_HAND, 'by hand', 38.0, 26.0),
    _row(deploy.OV_DEFAULTS.format('bf16 here'), 'by hand', 44.0, 24.0),
    _row('int8, torchao PT2E + inductor (fishzoo.quantize)', 'fishzoo', 26.0, 50.0),
    _row(deploy.OV_INT8_HAND, 'by hand', 36.0, 30.0),
    _row('fishzoo export --format onnx --int8', 'fishzoo', 20.0, 60.0),
    _row('fishzoo export --format openvino --int8', 'fishzoo', 34.0, 36.0),
]


def _targets(rows=ROWS):
    return {t['target'].split(',')[0].split(' (')[0]: t for t in deploy.targets(rows)}


def test_targets_pick_the_fastest_fishzoo_int8_path():
    targets = _targets()
    fastest = targets['fastest fishzoo int8 vs fp32 fast path']
    assert fastest['measured'] == pytest.approx(3.4) and not fastest['met']
    named = next(t['target'] for t in deploy.targets(ROWS) if t['target'].startswith('fastest'))
    assert 'openvino --int8' in named
    versus_hand = targets['fastest fishzoo int8']
    assert versus_hand['measured'] == pytest.approx(34 / 36) and not versus_hand['met']
    assert targets['fishzoo.quantize vs fp32 fast path']['met']  # 2.6 >= 2.5
    latency = next(t for t in deploy.targets(ROWS) if t['target'].startswith('batch-1'))
    assert latency['measured'] == pytest.approx(0.36) and not latency['met']


def test_the_one_call_is_measured_against_the_best_float_path():
    behind = next(t for t in deploy.targets(ROWS) if t['target'].startswith('optimize_for_inference() auto'))
    assert 'the best float path (OpenVINO compile_model, defaults' in behind['target']
    assert behind['measured'] == pytest.approx(40 / 44) and not behind['met']
    ahead = [dict(r, img_per_s=50.0) if r['name'].startswith('optimize_for_inference() (auto') else r for r in ROWS]
    target = next(t for t in deploy.targets(ahead) if t['target'].startswith('optimize_for_inference() auto'))
    assert target['measured'] == pytest.approx(50 / 44) and target['met']


def test_markdown_table_has_every_row_ratio_and_kernel():
    result = dict(date='2026-12-02', machine='test', cpu_features='AMX-BF16, VNNI', batch=8, rounds=3,
                  models={'fishnet150': ROWS}, targets=deploy.targets(ROWS))
    table = deploy.markdown(result)
    assert table.count('\n| ') >= len(ROWS) + 4
    assert '| fishzoo export --format openvino --int8 | fishzoo | 34.0 | 3.40 | 36.0 |' in table
    assert '| AMX 150/150 conv |' in table and 'CPU features: AMX-BF16, VNNI.' in table
    assert '| no |' in table and '| yes |' in table


def test_kernel_names_say_whether_amx_ran():
    assert measure.describe_kernels(Counter({'brg_conv_fwd:avx10_1_512_amx bf16': 49,
                                             'brgconv_1x1:avx10_1_512_amx bf16': 101})) == 'AMX 150/150 conv, bf16'
    assert measure.describe_kernels(Counter({'brgconv_avx512_amx_1x1_I8': 3, 'jit_avx512_I8': 1})) \
        == 'AMX 3/4 conv, int8'
    assert measure.describe_kernels(Counter({'brg_conv_fwd:avx512_core u8': 2, 'brg_conv_fwd:avx512_core f32': 1})) \
        == 'avx512_core (3 conv, fp32/int8)'
    assert measure.describe_kernels(Counter()) == '-'


def test_onednn_kernels_are_read_from_torch():
    """One real convolution under oneDNN's verbose mode: its implementation is captured, not printed."""
    import torch
    conv = torch.nn.Conv2d(64, 64, 3).eval().to(memory_format=torch.channels_last)
    x = torch.randn(8, 64, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        kernels = measure.onednn_conv_kernels(lambda: conv(x))
    assert sum(kernels.values()) >= 1, kernels
    assert all(key.endswith(' f32') for key in kernels), kernels  # the source data type is read too


def test_mobile_targets_and_table():
    """--mobile: ExecuTorch int8 against ExecuTorch fp32, ExecuTorch fp32 against torch eager, per model."""
    def row(name, latency, note='-'):
        return dict(_row(name, 'fishzoo', 0.0, latency, note), model='fishnet_s64', size=64, throughput=[],
                    img_per_s=None)
    rows = [row(deploy.EAGER, 16.0), row(deploy.BASELINE, 6.0), row('ExecuTorch fp32 (x)', 4.0, 'all ops in XNNPACK'),
            row('ExecuTorch int8 (x)', 3.0), row('LiteRT fp32 (x)', 3.5), row('LiteRT int8 (x)', 2.5)]
    targets = deploy.mobile_targets({'fishnet_s64': rows})
    assert [(t['measured'], t['met']) for t in targets] == [(pytest.approx(0.75), False), (pytest.approx(0.25), True)]
    result = dict(date='2026-12-03', machine='test', cpu_features='VNNI', rounds=5, min_seconds=2.0, threads=2,
                  models={'fishnet_s64': rows}, targets=targets)
    table = deploy.mobile_markdown(result)
    assert '| ExecuTorch fp32 (x) | fishzoo | 4.00 | 4.40 | 0.25 | 0.67 | all ops in XNNPACK |' in table
    assert '| fishnet_s64: ExecuTorch int8 / ExecuTorch fp32 batch-1 median, <= 0.5 | 0.75 | no |' in table
