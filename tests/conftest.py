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
