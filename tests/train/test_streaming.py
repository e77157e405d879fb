"""fishzoo-train over streamed shards: a run killed with -9 inside an epoch resumes there and equals an
uninterrupted run; two processes train on every sample once per epoch in the same number of steps."""
import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from fishzoo.cli import main as cli_main
from fishzoo.train import STATE_FILE, checkpoint_dirs
from fishzoo.train import main as train_main
from tests.conftest import TRAIN_ARGS
from tests.helpers.hostile import REPO, kill_9_once_written, start_training
from tests.helpers.images import make_parquet_dataset

DIGITS_CONFIG = str(REPO / 'configs' / 'digits.yaml')


@pytest.fixture(scope='module')
def digit_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp('stream') / 'digits'
    assert cli_main(['shards', '--digits', '--output-dir', str(out), '--shard-count', '150']) == 0
    return out


@pytest.mark.slow
def test_killed_inside_a_streamed_epoch_resumes_there(digit_shards, tmp_path):
    """kill -9 after a mid-epoch checkpoint (--checkpointing-steps): the resumed run starts at that batch and its
    weights equal an uninterrupted run's, so no batch was repeated or left out."""
    # bit for bit needs the augmentations drawn in the training process (worker processes' random states are
    # not in a checkpoint): --workers 0, whatever auto would choose on a bigger machine
    common = ['--config', DIGITS_CONFIG, '--data-dir', str(digit_shards), '--epochs', '1', '--checkpointing-steps',
              '4', '--keep-checkpoints', '1', '--workers', '0']
    straight = tmp_path / 'straight'
    assert train_main([*common, '--output-dir', str(straight)]) == 0
    history = json.loads((straight / 'metrics.json').read_text())
    assert history[-1]['train_samples'] == 1437  # every sample of the epoch, no drop_last remainder

    killed = tmp_path / 'killed'
    kill_9_once_written(start_training(common, killed), killed / 'checkpoints' / 'epoch_0000_batch_000008' / STATE_FILE)
    newest = checkpoint_dirs(killed)[-1].name
    assert newest.startswith('epoch_0000_batch_') and not (killed / 'model.safetensors').exists()

    assert train_main([*common, '--output-dir', str(killed), '--resume', 'auto']) == 0
    resumed, reference = load_file(killed / 'model.safetensors'), load_file(straight / 'model.safetensors')
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    assert json.loads((killed / 'metrics.json').read_text())[-1]['train_samples'] == 1437


@pytest.mark.slow
def test_two_processes_stream_every_sample_once(digit_shards, tmp_path):
    out = tmp_path / 'ddp'
    proc = subprocess.run(
        ['accelerate', 'launch', '--multi_gpu', '--num_processes', '2', str(REPO / 'scripts' / 'train.py'),
         '--config', DIGITS_CONFIG, '--data-dir', str(digit_shards), '--output-dir', str(out), '--epochs', '2'],
        capture_output=True, text=True, timeout=600, env={**os.environ, 'PYTHONPATH': str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '2 processes' in proc.stdout + proc.stderr
    history = json.loads((out / 'metrics.json').read_text())
    assert [r['val_samples'] for r in history] == [360] * 3  # validation gathered as for folders
    assert [r['train_samples'] for r in history[1:]] == [1437, 1437]  # both processes together, each sample once
    assert history[2]['train_loss'] < history[1]['train_loss']


def test_workers_auto_is_logged_and_recorded(digit_shards, tmp_path, caplog, monkeypatch):
    from fishzoo.train import loader
    monkeypatch.setattr(loader, 'cores_per_process', lambda: 2)  # no worker forked from the test process
    out = tmp_path / 'run'
    with caplog.at_level('INFO', logger='fishzoo.train'):
        assert train_main(['--config', DIGITS_CONFIG, '--data-dir', str(digit_shards), '--epochs', '1',
                           '--output-dir', str(out), '--batch-size', '256']) == 0
    assert '--workers auto: 0 loader worker processes per training process (2 cores for this process' in caplog.text
    assert '\nworkers: 0\n' in (out / 'train_config.yaml').read_text()


def test_hugging_face_dataset_streams(tmp_path):
    """--dataset NAME --streaming: its parquet data files read in parts, validated on its validation split."""
    pytest.importorskip('datasets')
    dataset = make_parquet_dataset(tmp_path / 'hf')
    out = tmp_path / 'run'
    assert train_main(['--dataset', str(dataset), '--streaming', '--epochs', '1', '--output-dir', str(out),
                       *TRAIN_ARGS]) == 0
    history = json.loads((out / 'metrics.json').read_text())
    assert history[-1]['train_samples'] == 38 and history[-1]['val_samples'] == 9
    assert json.loads((out / 'config.json').read_text())['label_names'] == ['ant', 'bee', 'cow']


def test_multilabel_shards_train_and_tune_thresholds(tmp_path):
    from tests.helpers.images import make_multilabel_csv
    csv = make_multilabel_csv(tmp_path / 'ml')
    written = tmp_path / 'shards'
    assert cli_main(['shards', '--train-csv', str(csv), '--output-dir', str(written), '--val-split', '0.25']) == 0
    out = tmp_path / 'run'
    assert train_main(['--data-dir', str(written), '--epochs', '1', '--output-dir', str(out), *TRAIN_ARGS]) == 0
    history = json.loads((out / 'metrics.json').read_text())
    assert 'val_f1_micro' in history[-1] and history[-1]['train_samples'] == 18
    config = json.loads((out / 'config.json').read_text())
    assert config['multilabel'] and len(config['thresholds']) == len(config['label_names'])
