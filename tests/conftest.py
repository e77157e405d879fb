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
