import os

# tests never reach the network: huggingface_hub and timm resolve hub names offline only
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TIMM_USE_HF_HUB', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


CPU_FLAGS = {  # /proc/cpuinfo flags of the CPUs the precision choice is tested on
    'amx': 'fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8 avx512_fp16',
    'avx512_bf16': 'fpu sse2 avx2 avx512f avx512_vnni avx512_bf16',  # Cooper Lake, Zen 4
    'vnni': 'fpu sse2 avx2 avx512f avx512_vnni',  # Ice Lake
    'plain': 'fpu sse2 avx2',
}


@pytest.fixture
def fake_cpu(tmp_path, monkeypatch):
    """``fake_cpu('amx')``: every precision decision in this test sees that CPU (a cpuinfo file with its flags,
    the per-process cache cleared); returns its :class:`fishzoo.cpu_features.CpuFeatures`."""
    from fishzoo import cpu_features as cpu_module

    def fake(kind: str):
        path = tmp_path / f'cpuinfo-{kind}'
        flags = CPU_FLAGS.get(kind, kind)
        path.write_text(f'processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\n'
                        f'processor\t: 1\nflags\t\t: {flags}\n')
        monkeypatch.setattr(cpu_module, 'CPUINFO', str(path))
        cpu_module.cpu_features.cache_clear()
        return cpu_module.cpu_features()
    yield fake
    cpu_module.cpu_features.cache_clear()


# a small real training run, shared by the training and predict tests
TRAIN_ARGS = ['--model', 'fishnet_s64', '--img-size', '32', '--batch-size', '4', '--opt', 'adamw', '--lr', '2e-3',
              '--hflip', '0', '--workers', '0']


@pytest.fixture(scope='session')
def image_dataset(tmp_path_factory):
    from tests.helpers.images import make_train_val
    return make_train_val(tmp_path_factory.mktemp('data') / 'shapes')


@pytest.fixture(scope='session')
def trained_run(image_dataset, tmp_path_factory):
    from fishzoo.train import main
    out = tmp_path_factory.mktemp('runs') / 'shapes'
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(out), '--epochs', '3',
                 '--keep-checkpoints', '2', *TRAIN_ARGS]) == 0
    return out
