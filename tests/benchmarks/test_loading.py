"""benchmarks/loading.py: every source read in full, by worker count, and the cores a published GPU rate needs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / 'benchmarks' / 'loading.py'


@pytest.mark.slow
def test_loading_benchmark_rows(tmp_path):
    out = tmp_path / 'loading.json'
    proc = subprocess.run([sys.executable, str(SCRIPT), '--images', '48', '--batch-size', '8', '--workers', '0', '1',
                           '--no-step', '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r['source'], r['workers']) for r in result['rows']] == [
        (source, workers) for source in ('class folders', 'fishzoo shards', 'HF parquet streaming')
        for workers in (0, 1)]
    assert all(r['img_per_s'] > 0 for r in result['rows'])
    assert 'loader cores at this rate' in proc.stdout and 'ResNet-50, RTX 3090, AMP (timm, published)' in proc.stdout
