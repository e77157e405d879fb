"""Signals during training: a checkpoint and a clean exit, under accelerate launch too."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from fishzoo.train import STATE_FILE, checkpoint_dirs
from fishzoo.train import main as train_main
from tests.conftest import TRAIN_ARGS
from tests.helpers.hostile import start_training


@pytest.mark.parametrize('signum, code', [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_signal_saves_and_exits(image_dataset, tmp_path, signum, code):
    args = ['--data-dir', str(image_dataset), '--epochs', '3', *TRAIN_ARGS]
    out = tmp_path / 'sig'
    proc = start_training(args, out)
    deadline = time.monotonic() + 300
    while not (out / 'metrics.json').exists():  # epoch 0 evaluated: training has begun
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stderr
    assert f'stopped by {signal.Signals(signum).name}' in stderr and 'checkpoint saved' in stderr
    newest = checkpoint_dirs(out)[-1]
    assert (newest / STATE_FILE).exists()
    assert train_main([*args, '--output-dir', str(out), '--resume', 'auto']) == 0
    assert [r['epoch'] for r in json.loads((out / 'metrics.json').read_text())][-1] == 3


@pytest.mark.slow
def test_process_group_sigterm_under_accelerate_launch_saves(image_dataset, tmp_path):
    """kill -TERM to the process group of `accelerate launch`: the launcher forwards its own SIGTERM at once,
    which the run took for a second signal and stopped without the checkpoint it had just promised."""
    out = tmp_path / 'launched'
    args = ['--data-dir', str(image_dataset), '--epochs', '30', *TRAIN_ARGS, '--img-size', '64', '--output-dir',
            str(out)]
    proc = subprocess.Popen([shutil.which('accelerate'), 'launch', '--cpu', '--num_processes', '1',
                             '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
                             '-m', 'fishzoo.train', *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / 'metrics.json').exists():  # epoch 0 evaluated: training has begun
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    # the launcher relays the worker's stderr and sometimes drops a chunk read as the signal arrives, so the
    # checkpoint is what is checked here (the log line is checked in test_a_launcher_repeating_the_signal...)
    newest = checkpoint_dirs(out)[-1]
    assert (newest / STATE_FILE).exists(), stderr[-3000:]
    assert '_batch_' in newest.name, newest  # saved mid-epoch, by the signal


def test_a_launcher_repeating_the_signal_is_the_same_request(monkeypatch, caplog):
    from fishzoo.train import signals
    monkeypatch.setenv('ACCELERATE_MIXED_PRECISION', 'no')  # what accelerate launch sets
    stops = signals.StopSignals()
    with caplog.at_level('WARNING', logger='fishzoo.train'):
        stops._on_signal(signal.SIGTERM, None)
        stops._on_signal(signal.SIGTERM, None)  # the launcher's, milliseconds later: ignored
    assert stops.signum == signal.SIGTERM and len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith('SIGTERM received: saving a checkpoint at the end of this '
                                                     'batch (the launcher ends this process 5 s after the signal')
    stops._first_at -= signals.REPEAT_WINDOW_S
    with pytest.raises(KeyboardInterrupt):  # pressed again later: stop at once
        stops._on_signal(signal.SIGINT, None)
