"""fishzoo.train.checkpoints: finding the newest complete checkpoint; a run killed with -9 and resumed
equals an uninterrupted one."""
import json
import random
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file

from fishzoo import train
from fishzoo.train import STATE_FILE, ConfigError, checkpoint_dirs, main
from fishzoo.train import main as train_main
from tests.conftest import TRAIN_ARGS
from tests.helpers.hostile import (
    Payload,
    kill_9_once_written,
    one_line,
    start_training,
)


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
    kill_9_once_written(start_training(common, killed), killed / 'checkpoints' / 'epoch_0001' / STATE_FILE)
    assert not (killed / 'model.safetensors').exists()  # it really died mid-run

    assert main([*common, '--output-dir', str(killed), '--resume', 'auto']) == 0
    resumed, reference = _weights(killed), _weights(straight)
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    assert [r['epoch'] for r in json.loads((killed / 'metrics.json').read_text())] == [0, 1, 2, 3]


@pytest.fixture
def checkpointed_run(trained_run, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(trained_run, run)
    return run


@pytest.mark.parametrize('victim', ['optimizer.bin', 'random_states_0.pkl', STATE_FILE])
def test_payload_via_resume(checkpointed_run, image_dataset, marker, capsys, victim):
    newest = checkpoint_dirs(checkpointed_run)[-1]
    torch.save({'payload': Payload(marker)}, newest / victim)
    assert train_main(['--data-dir', str(image_dataset), '--output-dir', str(checkpointed_run), *TRAIN_ARGS,
                 '--epochs', '4', '--resume', 'auto']) == 2
    line = one_line(capsys, f'--resume {newest}: refused a file that is not plain tensors')
    assert 'Traceback' not in line


@pytest.mark.slow
def test_repeated_kill_9(image_dataset, tmp_path):
    """kill -9 at random moments (during saves too), resumed with --resume auto each time: the final weights
    equal an uninterrupted run's."""
    # 12 short epochs (~0.6 s each after a ~3 s start): three kills 3.3-4.8 s into each attempt always land
    # before the run could finish, at random points of start-up, training, validation or saving
    args = ['--data-dir', str(image_dataset), '--epochs', '12', *TRAIN_ARGS]
    straight = tmp_path / 'straight'
    assert train_main([*args, '--output-dir', str(straight)]) == 0
    out = tmp_path / 'killed'
    rng = random.Random(1234)
    kills = 0
    for attempt in range(3):
        proc = start_training(args + (['--resume', 'auto'] if attempt else []), out)
        time.sleep(rng.uniform(3.3, 4.8))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
    assert kills == 3 and not (out / 'model.safetensors').exists()
    assert train_main([*args, '--output-dir', str(out), '--resume', 'auto']) == 0
    resumed, reference = load_file(out / 'model.safetensors'), load_file(straight / 'model.safetensors')
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
