"""fishzoo.train.checkpoints: finding the newest complete checkpoint; a run killed with -9 and resumed
equals an uninterrupted one."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from fishzoo import train
from fishzoo.train import STATE_FILE, ConfigError, main
from tests.conftest import TRAIN_ARGS


def test_resume_auto_takes_the_newest_complete_checkpoint(tmp_path):
    root = tmp_path / 'checkpoints'
    for name, complete in (('epoch_0001', True), ('epoch_0002', True), ('.epoch_0003.tmp', True),
                           ('epoch_0004', False)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / STATE_FILE).write_bytes(b'')
    # a save killed half way leaves a .tmp folder or one without fishzoo's state file: both are ignored
    assert train.find_resume_checkpoint(tmp_path, 'auto') == root / 'epoch_0002'
    assert train.find_resume_checkpoint(tmp_path / 'none', 'auto') is None
    with pytest.raises(ConfigError, match='not a complete fishzoo checkpoint folder'):
        train.find_resume_checkpoint(tmp_path, str(root / 'epoch_0004'))


def _weights(folder):
    return load_file(folder / 'model.safetensors')


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted(image_dataset, tmp_path):
    common = ['--data-dir', str(image_dataset), '--epochs', '3', *TRAIN_ARGS]
    straight = tmp_path / 'straight'
    assert main([*common, '--output-dir', str(straight)]) == 0

    killed = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, '-m', 'fishzoo.train', *common, '--output-dir', str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / 'checkpoints' / 'epoch_0001' / STATE_FILE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, 'training ended before its first checkpoint'
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / 'model.safetensors').exists()  # it really died mid-run

    assert main([*common, '--output-dir', str(killed), '--resume', 'auto']) == 0
    resumed, reference = _weights(killed), _weights(straight)
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    assert [r['epoch'] for r in json.loads((killed / 'metrics.json').read_text())] == [0, 1, 2, 3]
