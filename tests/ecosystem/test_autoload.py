"""timm finds fishzoo's models without `import fishzoo`, after `pip install .` and `pip install -e .`.

Each install goes into a fresh virtual environment that sees this machine's packages (torch, timm, ...)
as a plain path, so the .pth files of the fishzoo already installed here are not processed there.
"""
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import timm

REPO = Path(__file__).resolve().parents[2]
SITE_PACKAGES = Path(timm.__file__).resolve().parents[1]

CREATE = ("import sys; assert 'fishzoo' not in sys.modules and 'timm' not in sys.modules; "
          "import timm; m = timm.create_model('fishnet_s64', num_classes=3); "
          "print(type(m).__module__, 'fishzoo' in sys.modules)")


def _run(python, code, **env):
    return subprocess.run([str(python), '-c', code], capture_output=True, text=True, timeout=300, cwd='/',
                          env={**os.environ, 'PYTHONPATH': '', **env})


def _venv_with_system_packages(path):
    venv.create(path, with_pip=True)
    site = next(path.glob('lib/python*/site-packages'))
    (site / '_system_packages.pth').write_text(f'{SITE_PACKAGES}\n')  # a path line: no .pth processing there
    return path / 'bin' / 'python'


@pytest.mark.slow
def test_timm_finds_fishzoo_without_import(tmp_path):
    """pip install . and then pip install -e . (one venv, the second replacing the first): timm finds the
    models without an import each time, FISHZOO_AUTOLOAD=0 turns the hook off, and interpreter start-up
    imports only the hook."""
    python = _venv_with_system_packages(tmp_path / 'venv')
    before = _run(python, CREATE)
    assert before.returncode != 0 and 'Unknown model (fishnet_s64)' in before.stderr  # the control

    source = tmp_path / 'src'
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns('.git', '__pycache__', '*.egg-info'))
    install = [str(python), '-m', 'pip', 'install', '--no-deps', '--no-build-isolation', '--no-index', '-q']
    for how in ([str(source)], ['-e', str(source)]):
        proc = subprocess.run(install + how, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr

        after = _run(python, CREATE)
        assert after.returncode == 0, (how, after.stderr)
        assert after.stdout.split() == ['fishzoo.models.fishnet', 'True'], how

        disabled = _run(python, CREATE, FISHZOO_AUTOLOAD='0')
        assert disabled.returncode != 0 and 'Unknown model (fishnet_s64)' in disabled.stderr, how

        # nothing heavy at interpreter start: only the hook module is imported
        startup = _run(python, "import sys; print(sorted(m for m in sys.modules if 'fishzoo' in m or m == 'torch'))")
        assert startup.stdout.strip() == "['fishzoo_autoload']", how


def test_broken_fishzoo_never_breaks_timm(tmp_path):
    broken = tmp_path / 'fishzoo'
    broken.mkdir()
    (broken / '__init__.py').write_text("raise ImportError('simulated broken install')\n")
    proc = _run(sys.executable, "import timm; print(timm.create_model('resnet18').__class__.__name__)",
                PYTHONPATH=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'ResNet'
    assert 'fishzoo could not be imported' in proc.stderr and 'simulated broken install' in proc.stderr


def test_hf_hub_config_naming_a_fishzoo_architecture(tmp_path):
    """An hf-hub: repo whose config.json names a fishzoo model loads in a fresh interpreter, from the cache."""
    import torch

    import fishzoo  # noqa: F401
    from fishzoo.hub import save_pretrained
    model = timm.create_model('fishnet_s64', num_classes=4).eval()
    revision = '0123456789abcdef0123456789abcdef01234567'
    repo = tmp_path / 'hub' / 'models--someone--fishnet_s64-test'
    save_pretrained(model, repo / 'snapshots' / revision)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(revision)
    x = torch.randn(1, 3, 64, 64)
    expected = model(x).tolist()
    torch.save(x, tmp_path / 'x.pt')

    code = ("import json, sys, torch, timm; "
            "m = timm.create_model('hf-hub:someone/fishnet_s64-test', pretrained=True).eval(); "
            f"x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True); "
            "print(json.dumps(m(x).tolist()))")
    proc = _run(sys.executable, code, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'hub'))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected


# --- every import order, in fresh interpreters of this environment (where `pip install -e ".[test]"` put the
# hook); each row is what a user or a library does before (or instead of) `import timm`

FOUND = "import timm; print(timm.is_model('fishnet99'), type(timm.create_model('fishnet_s64')).__module__)"
ORDERS = {
    'find_spec first': "import importlib.util; assert importlib.util.find_spec('timm'); " + FOUND,
    'find_spec of a submodule first': "import importlib.util; importlib.util.find_spec('timm.models'); " + FOUND,
    'transformers first': 'import transformers; ' + FOUND,
    'transformers Auto classes first': 'from transformers import AutoModelForImageClassification; ' + FOUND,
    'accelerate first': 'import accelerate; ' + FOUND,
    'torchvision and huggingface_hub first': 'import torchvision, huggingface_hub; ' + FOUND,
}


def _installed_hook_is_this_checkout():
    """The tests below exercise the hook that site-packages holds: it must be this checkout's."""
    import importlib.util
    spec = importlib.util.find_spec('fishzoo_autoload')
    installed = Path(spec.origin).read_text()
    assert installed == (REPO / 'fishzoo_autoload.py').read_text(), \
        f'{spec.origin} is an older copy: pip install -e . again'


@pytest.mark.slow
@pytest.mark.parametrize('order', list(ORDERS))
def test_import_orders(order):
    _installed_hook_is_this_checkout()
    proc = subprocess.run([sys.executable, '-c', ORDERS[order]], capture_output=True, text=True, timeout=300, cwd='/')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ['True', 'fishzoo.models.fishnet'], proc.stdout


@pytest.mark.slow
def test_python_dash_m_spawned_workers_and_accelerate_launch(tmp_path):
    """``python -m`` a user's module whose DataLoader workers are spawned (each a fresh interpreter that
    unpickles a dataset building a fishzoo model), and the same script under ``accelerate launch``."""
    _installed_hook_is_this_checkout()
    (tmp_path / 'user_job.py').write_text('''
import torch
import pytest
import timm


class Models(torch.utils.data.Dataset):  # each item built in a worker process
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.tensor(timm.create_model('fishnet_s64', num_classes=2).num_classes)


if __name__ == '__main__':
    loader = torch.utils.data.DataLoader(Models(), num_workers=1, multiprocessing_context='spawn')
    print('workers', sum(int(b) for b in loader), timm.is_model('fishnet150'))
''')
    env = {**os.environ, 'PYTHONPATH': str(tmp_path)}
    proc = subprocess.run([sys.executable, '-m', 'user_job'], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0 and proc.stdout.split() == ['workers', '4', 'True'], proc.stderr[-2000:]
    launcher = shutil.which('accelerate')
    assert launcher, 'accelerate is a dependency of fishzoo'
    proc = subprocess.run([launcher, 'launch', '--cpu', '--num_processes', '1', '--num_machines', '1',
                           '--mixed_precision', 'no', '--dynamo_backend', 'no', str(tmp_path / 'user_job.py')],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0 and 'workers 4 True' in proc.stdout, proc.stderr[-2000:]


def test_autoload_off_in_every_order():
    for order in ('find_spec first', 'transformers first'):
        code = ORDERS[order].replace(FOUND, "import timm; print(timm.is_model('fishnet99'))")
        proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd='/',
                              env={**os.environ, 'FISHZOO_AUTOLOAD': '0'})
        assert proc.returncode == 0 and proc.stdout.split() == ['False'], (order, proc.stderr[-1000:])
