"""The peer benchmark's machinery (rounds, memory, targets, tables) on a quick run; its numbers are not
checked here (performance claims live in the benchmark's own output, never in timed tests)."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import measure  # noqa: E402
import peers as pb  # noqa: E402


@pytest.fixture(scope='module')
def quick_result():
    import pytorchcv  # noqa: F401  (the test extra brings it: missing is a failure, not a skip)
    cfg = pb.BenchmarkConfig.quick()
    cfg.small_models = ('fishnet_s64',)
    return pb.run_benchmark(cfg)


@pytest.mark.slow
def test_quick_run_has_every_case(quick_result):
    keys = {c['key'] for c in quick_result['cases']}
    for impl, path in [('fishzoo', 'eager NCHW'), ('fishzoo', 'eager channels_last'),
                       ('fishzoo', 'BN folded, channels_last'), ('fishzoo', 'optimize_for_inference'),
                       ('pytorchcv', 'eager NCHW'), ('pytorchcv', 'eager channels_last')]:
        assert f'inference/fishnet99/{impl}/{path}' in keys
    for impl, path in [('fishzoo', 'eager NCHW'), ('fishzoo', 'eager channels_last, grad checkpointing'),
                       ('pytorchcv', 'eager NCHW')]:
        assert f'training/fishnet99/{impl}/{path}' in keys
    assert 'inference/fishnet_s64/fishzoo/optimize_for_inference' in keys
    assert 'training/resnet18/timm/eager channels_last' in keys
    for case in quick_result['cases']:
        assert len(case['samples']) == (2 if case['section'] == 'inference' else 1)
        assert case['per_second'] > 0 and math.isfinite(case['gflops'])
    assert quick_result['roofline']['gflops'] > 0


def test_memory_and_activations(quick_result):
    training = [c for c in quick_result['cases'] if c['section'] == 'training']
    if quick_result['cases'][0]['peak_mb'] is None:
        pytest.skip('peak memory needs Linux /proc/self/clear_refs')
    assert all(c['peak_mb'] > 0 for c in training)
    act = quick_result['activation_mb']
    assert 0 < act['checkpointing'] < act['plain']


def test_targets_and_tables(quick_result):
    names = {t['target'] for t in quick_result['targets']}
    assert 'inference: optimize_for_inference / best pytorchcv eager' in names
    assert 'training: activation memory with / without grad checkpointing' in names
    assert not any('compiled' in n for n in names)  # the quick run compiles nothing
    assert quick_result['fused_max_rel_diff'] <= 1e-4
    table = pb.markdown(quick_result)
    assert table.count('\n| inference |') == sum(c['section'] == 'inference' for c in quick_result['cases'])
    assert 'Conv roofline:' in table and '| target | measured | needed | met |' in table


def test_readme_section(tmp_path, quick_result):
    readme = tmp_path / 'README.md'
    readme.write_text(f'# x\n{measure.README_START}\nstale table\n{measure.README_END}\nrest\n')
    measure.write_readme_section(str(readme), pb.markdown(quick_result))
    text = readme.read_text()
    assert 'stale table' not in text and text.endswith(f'{measure.README_END}\nrest\n') and 'Conv roofline' in text
    readme.write_text('no markers')
    with pytest.raises(ValueError, match='no <!-- benchmark:start --> .* markers'):
        measure.write_readme_section(str(readme), 'table')


def test_target_evaluation():
    def case(impl, run, rate, peak=None, section='inference'):
        c = measure.Case(section, 'fishnet150', impl.value, run.value, 8, 224, 6.4, lambda: None, samples=[rate])
        c.peak_mb = peak
        return pb.CaseKey(section, impl, run), c
    # 240 GFLOP/s
    roofline = measure.Case('roofline', 'conv', 'torch', 'eager', 1, 56, 10.0, lambda: None, samples=[12.0])
    cases = pb.Cases('fishnet150')
    for key, c in [case(pb.Impl.FISHZOO, pb.Run.FAST, 14.0), case(pb.Impl.FISHZOO, pb.Run.EAGER_CL, 10.5),
                   case(pb.Impl.PYTORCHCV, pb.Run.EAGER_NCHW, 10.0), case(pb.Impl.PYTORCHCV, pb.Run.EAGER_CL, 11.0),
                   case(pb.Impl.PYTORCHCV, pb.Run.PEER_COMPILED, 13.0),
                   case(pb.Impl.FISHZOO, pb.Run.TRAIN_COMPILED, 4.0, peak=900, section='training'),
                   case(pb.Impl.PYTORCHCV, pb.Run.EAGER_NCHW, 3.0, peak=1000, section='training'),
                   case(pb.Impl.PYTORCHCV, pb.Run.EAGER_CL, 3.5, peak=1100, section='training'),
                   case(pb.Impl.FISHZOO, pb.Run.EAGER_CL, 3.5, section='training'),
                   case(pb.Impl.FISHZOO, pb.Run.CHECKPOINTING, 2.8, section='training')]:
        cases.add(key, c)
    measured = pb.Measured(cases, roofline, dict(plain=100.0, checkpointing=40.0))
    rows = {t['target']: t for t in pb.evaluate_targets(measured, {'pytorchcv', 'compile', 'memory'})}
    best = rows['inference: optimize_for_inference / best pytorchcv eager']
    assert best['value'] == pytest.approx(14 / 11) and best['met']
    roof = rows['inference: optimize_for_inference GFLOP/s / conv roofline']
    assert roof['value'] == pytest.approx(14 * 12.8 / 240) and not roof['met']
    assert rows['training: fishzoo compiled / pytorchcv eager (as shipped, NCHW)']['met']  # 1.33
    assert rows['training: fishzoo compiled / pytorchcv eager channels_last']['value'] == pytest.approx(4 / 3.5)
    assert rows['training: fishzoo compiled peak memory / pytorchcv eager (lowest)']['met']  # 900 / 1000
    assert rows['training: activation memory with / without grad checkpointing']['met']
    assert rows['training: step time with / without grad checkpointing']['value'] == pytest.approx(1.25)
    assert 'inference: optimize_for_inference / onnxruntime' not in rows  # the run had no onnxruntime


def test_target_whose_case_is_missing_fails_loudly():
    """A target that applies to the run but finds no case is an error, never silently dropped."""
    roofline = measure.Case('roofline', 'conv', 'torch', 'eager', 1, 56, 10.0, lambda: None, samples=[12.0])
    measured = pb.Measured(pb.Cases('fishnet150'), roofline, dict(plain=100.0, checkpointing=40.0))
    onnx_target = next(t for t in pb.TARGETS if 'onnxruntime' in t.name)
    with pytest.raises(pb.MissingCase, match="target 'inference: optimize_for_inference / onnxruntime' needs a case "
                                             "this run did not measure: inference / fishnet150 / fishzoo"):
        pb.evaluate_targets(measured, {'onnx'}, [onnx_target])
    assert pb.evaluate_targets(measured, set(), [onnx_target]) == []  # not part of this run: not applicable


def test_device_tools_cuda_selection(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda *a: calls.append('sync'))
    monkeypatch.setattr(torch.cuda, 'reset_peak_memory_stats', lambda *a: calls.append('reset'))
    monkeypatch.setattr(torch.cuda, 'memory_allocated', lambda *a: 100)
    monkeypatch.setattr(torch.cuda, 'max_memory_allocated', lambda *a: 612)
    tools = measure.device_tools('cuda')
    base = tools.reset_peak()
    tools.sync()
    assert tools.peak_since(base) == 512 and calls == ['sync', 'reset', 'sync']
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert measure.default_device() == 'cuda'


def test_saved_activation_bytes_counts_distinct_non_parameters():
    conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    nbytes = measure.saved_activation_bytes(conv, lambda: torch.relu(conv(x)))
    # conv saves its input (x) and weight (a parameter: not counted); relu saves its output
    assert nbytes == x.numel() * 4 + 2 * 4 * 6 * 6 * 4


def test_script_readme_missing(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / 'peers.py'), '--quick', '--readme',
                           str(tmp_path / 'nope.md')],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and 'no such file' in proc.stderr


def test_conv_share_of_a_case():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 32, 32)

    def step():
        with torch.no_grad():
            return torch.relu(conv(x)) * 2 + 1
    share = measure.conv_share(step, 2, measure.device_tools('cpu'))
    assert 0 < share['conv_seconds'] <= share['profiled_seconds'] * 1.05
    assert 0 < share['conv_fraction'] <= 1.05
    assert share['conv_only_per_second'] == pytest.approx(2 / share['conv_seconds'])
