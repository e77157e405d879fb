"""fishzoo.train.Trainer built directly from parts: faults are injected as parts (a loss that turns NaN, a
checkpoint writer that fills the disk), not by patching module globals."""
import dataclasses
import errno
import os

import pytest
import torch

from fishzoo.errors import TrainingStopped
from fishzoo.train import CheckpointStore, Trainer, build_parts, checkpoint_dirs, create_accelerator, parse_args
from tests.conftest import TRAIN_ARGS


def _trainer(image_dataset, out, epochs=3, loss_fn=None, save_state=None):
    args = parse_args(['--data-dir', str(image_dataset), '--output-dir', str(out), '--epochs', str(epochs),
                       *TRAIN_ARGS])
    accelerator = create_accelerator(args)
    parts = build_parts(args, accelerator.num_processes)
    if loss_fn is not None:
        parts = dataclasses.replace(parts, loss_fn=loss_fn(parts.loss_fn))
    store = CheckpointStore(accelerator, out, keep=args.keep_checkpoints,
                            save_state=save_state(accelerator.save_state) if save_state else None)
    return Trainer(args, accelerator, parts, store=store)


def test_trainer_runs_on_given_parts(image_dataset, tmp_path):
    trainer = _trainer(image_dataset, tmp_path / 'run', epochs=1)
    last = trainer.run()
    assert last['epoch'] == 1 and torch.isfinite(torch.tensor(last['train_loss']))
    assert [p.name for p in checkpoint_dirs(tmp_path / 'run')] == ['epoch_0001']
    assert (tmp_path / 'run' / 'model.safetensors').exists()


def test_nan_loss_keeps_last_good_checkpoint(image_dataset, tmp_path):
    def poisoned(loss_fn):
        calls = [0]

        def loss(logits, targets):
            calls[0] += 1
            value = loss_fn(logits, targets)
            return value * float('nan') if calls[0] > 8 else value  # 6 batches an epoch: NaN in epoch 2
        return loss
    out = tmp_path / 'nan'
    with pytest.raises(TrainingStopped) as stopped:
        _trainer(image_dataset, out, loss_fn=poisoned).run()
    message = str(stopped.value)
    assert 'the loss became nan at epoch 2, batch 3 (update 9)' in message and stopped.value.exit_code == 2
    assert f'the last good checkpoint is {out / "checkpoints" / "epoch_0001"}' in message
    assert [p.name for p in checkpoint_dirs(out)] == ['epoch_0001']
    assert not (out / 'model.safetensors').exists()


def test_full_disk_keeps_previous_checkpoint(image_dataset, tmp_path):
    def disk_fills_on_second_save(save_state):
        saves = [0]

        def save(output_dir):
            saves[0] += 1
            save_state(output_dir)
            if saves[0] == 2:  # the second checkpoint: written (in part), then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save
    out = tmp_path / 'full'
    with pytest.raises(TrainingStopped) as stopped:
        _trainer(image_dataset, out, save_state=disk_fills_on_second_save).run()
    message = str(stopped.value)
    assert 'could not write checkpoint' in message and 'No space left on device' in message
    assert f'the previous checkpoint {out}/checkpoints/epoch_0001 is intact' in message
    assert [p.name for p in (out / 'checkpoints').iterdir()] == ['epoch_0001']  # no half-written folder left
    resumed = _trainer(image_dataset, out)
    resumed.args.resume = 'auto'
    assert resumed.run()['epoch'] == 3
