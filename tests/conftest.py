import os
from pathlib import Path

# tests never reach the network: huggingface_hub and timm resolve hub names offline only
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TIMM_USE_HF_HUB', '1')
# 'auto' precision by the measured table, not a timing probe: the same decision on every run of a machine
# (tests/test_precision_probe.py runs the probe itself); the probe's cache never touches the user's home
os.environ.setdefault('FISHZOO_PRECISION_PROBE', 'off')
os.environ.setdefault('FISHZOO_CACHE', os.path.join(__import__('tempfile').mkdtemp(prefix='fishzoo-cache-')))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """LiteRT's tests run in an environment of their own (litert-torch's pins do not resolve beside the test
    extra): skipped where it is not installed, a failure where FISHZOO_TEST_LITERT=1 says it must be."""
    import importlib.util
    if importlib.util.find_spec('litert_torch') is not None:
        return
    if os.environ.get('FISHZOO_TEST_LITERT') == '1':
        raise pytest.UsageError('FISHZOO_TEST_LITERT=1 but litert-torch is not installed: '
                                "pip install -e '.[test-litert]'")
    skip = pytest.mark.skip(reason="LiteRT's tests run in their own environment: pip install -e '.[test-litert]' "
                                   '(.ci/run makes it)')
    for item in items:
        if 'litert' in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope='session')
def _no_loader_workers_forked_from_the_test_process():
    """Runs inside the pytest process decide ``--workers auto`` as on 2 cores (no workers on a CPU), whatever the
    machine: forking DataLoader workers from a process that has loaded OpenVINO, inductor's compile workers and
    the rest of the suite crashed it once. Runs in a subprocess (a fresh interpreter) decide for the machine;
    tests/train/test_loader.py tests the rule itself with the function left as it is (``__wrapped__``)."""
    from fishzoo.train import loader
    original = loader.cores_per_process

    def at_most_two(local_processes=None):
        return min(2, original(local_processes))

    at_most_two.__wrapped__ = original
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loader, 'cores_per_process', at_most_two)
        yield


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


# --- hub folders and hostile inputs ------------------------------------------------------------------

@pytest.fixture(scope='session')
def saved_hub_folder(tmp_path_factory):
    """A small hub folder (fishnet_s64, 3 classes), saved once; tests that change it take ``hub_folder``."""
    import timm

    from fishzoo.hub import save_pretrained
    model = timm.create_model('fishnet_s64', num_classes=3).eval()
    return model, save_pretrained(model, tmp_path_factory.mktemp('hub') / 'hub', label_names=['a', 'b', 'c'])


@pytest.fixture
def hub_folder(saved_hub_folder, tmp_path):
    """(model, a copy of the saved hub folder of this test's own)."""
    import shutil
    model, folder = saved_hub_folder
    return model, Path(shutil.copytree(folder, tmp_path / 'hub'))


@pytest.fixture
def marker(tmp_path):
    """Where a pickle payload would leave its mark; the test fails if it does."""
    path = tmp_path / 'PAYLOAD_RAN'
    yield path
    assert not path.exists(), 'a checkpoint executed code'


@pytest.fixture(scope='session')
def bombs(tmp_path_factory):
    """Past PIL's own limit (it raises), and between PIL's warning and its limit (it would decode 100 Mpx)."""
    from tests.helpers.images import write_png_bomb
    root = tmp_path_factory.mktemp('bombs')
    return [write_png_bomb(root / 'bomb.png'), write_png_bomb(root / 'big.png', 10000, 10000)]
