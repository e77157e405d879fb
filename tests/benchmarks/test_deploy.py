"""The deployment benchmark's targets and table from recorded rows (its timings are not checked here: the
full run takes minutes and performance claims live in its own output)."""
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.deploy

BENCHMARKS = Path(__file__).resolve().parents[2] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import deploy  # noqa: E402


def _row(name, by, img_per_s, latency):
    return dict(model='fishnet150', size=224, name=name, by=by, setup_seconds=1.0, throughput=[img_per_s],
                img_per_s=img_per_s, latency_median_ms=latency, latency_p90_ms=latency * 1.1)


ROWS = [
    _row(deploy.BASELINE, 'fishzoo', 10.0, 100.0),
    _row('int8, torchao PT2E + inductor (fishzoo.quantize)', 'fishzoo', 26.0, 50.0),
    _row('OpenVINO int8 (nncf.quantize defaults)', 'by hand', 36.0, 30.0),
    _row('fishzoo export --format onnx --int8', 'fishzoo', 20.0, 60.0),
    _row('fishzoo export --format openvino --int8', 'fishzoo', 34.0, 36.0),
]


def test_targets_pick_the_fastest_fishzoo_int8_path():
    targets = {t['target'].split(',')[0].split(' (')[0]: t for t in deploy.targets(ROWS)}
    fastest = targets['fastest fishzoo int8']
    assert fastest['measured'] == pytest.approx(3.4) and not fastest['met']
    assert 'openvino --int8' in next(t['target'] for t in deploy.targets(ROWS) if t['target'].startswith('fastest'))
    versus_hand = targets['fastest fishzoo int8 vs OpenVINO int8 by hand']
    assert versus_hand['measured'] == pytest.approx(34 / 36) and not versus_hand['met']
    assert targets['fishzoo.quantize vs fp32 fast path']['met']  # 2.6 >= 2.5
    latency = next(t for t in deploy.targets(ROWS) if t['target'].startswith('batch-1'))
    assert latency['measured'] == pytest.approx(0.36) and not latency['met']


def test_markdown_table_has_every_row_and_ratio():
    result = dict(date='2026-12-02', machine='test', batch=8, rounds=3, models={'fishnet150': ROWS},
                  targets=deploy.targets(ROWS))
    table = deploy.markdown(result)
    assert table.count('\n| ') >= len(ROWS) + 4
    assert '| fishzoo export --format openvino --int8 | fishzoo | 34.0 | 3.40 | 36.0 |' in table
    assert '| no |' in table and '| yes |' in table
