"""fishzoo.train.Trainer built directly from parts: faults are injected as parts (a loss that turns NaN, a
checkpoint writer that fills the disk), not by patching module globals."""
import dataclasses
import errno
import os

import pytest
import torch
from safetensors.torch import load_file

from fishzoo.errors import TrainingStopped
from fishzoo.train import (
    CheckpointStore,
    Trainer,
    build_parts,
    checkpoint_dirs,
    create_accelerator,
    parse_args,
    resolve_run,
)
from tests.conftest import TRAIN_ARGS


def _trainer(image_dataset, out, epochs=3, loss_fn=None, save_state=None, extra=()):
    args = parse_args(['--data-dir', str(image_dataset), '--output-dir', str(out), '--epochs', str(epochs),
                       *TRAIN_ARGS, *extra])
    accelerator = create_accelerator(args)
    parts = build_parts(resolve_run(args, accelerator.num_processes), accelerator.num_processes)
    if loss_fn is not None:
        parts = dataclasses.replace(parts, loss_fn=loss_fn(parts.loss_fn))
    store = CheckpointStore(accelerator, out, keep=args.keep_checkpoints,
                            save_state=save_state(accelerator.save_state) if save_state else None)
    return Trainer(parts.config, accelerator, parts, store=store)


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
    assert [p.name for p in (out / 'checkpoints').iterdir() if p.is_dir()] == ['epoch_0001']  # no half-written one
    resumed = _trainer(image_dataset, out, extra=('--resume', 'auto'))
    assert resumed.run()['epoch'] == 3


@pytest.mark.parametrize('save_last', [False, True])
def test_the_best_epoch_is_published(image_dataset, tmp_path, caplog, save_last):
    """Validation top-1 scripted to peak at epoch 2 of 3: the folder holds epoch 2's weights (timm's
    model_best), or epoch 3's with --save-last; the card reports the published epoch's numbers."""
    out = tmp_path / 'best'
    trainer = _trainer(image_dataset, out, extra=['--keep-checkpoints', '3'] + (['--save-last'] if save_last else []))
    real_evaluate, scripted = trainer.evaluate, iter([10.0, 50.0, 90.0, 60.0])  # epoch 0 (untrained) to 3

    def evaluate(model, prefix='val'):
        return {**real_evaluate(model, prefix), f'{prefix}_top1': next(scripted)}
    trainer.evaluate = evaluate
    with caplog.at_level('INFO', logger='fishzoo.train'):
        trainer.run()
    published = load_file(out / 'model.safetensors')
    epoch = 3 if save_last else 2
    saved = load_file(out / 'checkpoints' / f'epoch_{epoch:04d}' / 'model.safetensors')
    assert all(torch.equal(published[k], saved[k]) for k in saved)
    other = load_file(out / 'checkpoints' / f'epoch_{5 - epoch:04d}' / 'model.safetensors')
    assert not all(torch.equal(published[k], other[k]) for k in other)
    card = (out / 'README.md').read_text()
    assert f'after epoch {epoch} (the published weights) of 3' in card
    assert ('| Top-1 accuracy (%) | 90.00 |' if not save_last else '| Top-1 accuracy (%) | 60.00 |') in card
    assert ('publishing epoch 2 (val_top1 90), the best' in caplog.text) != save_last


@pytest.mark.parametrize('tuning, metric', [('per-class', 'val_f1_micro_best'), ('global', 'val_f1_micro_best'),
                                            ('none', 'val_f1_micro')])
def test_multilabel_best_epoch_is_judged_at_the_threshold_it_will_use(tmp_path, tuning, metric):
    """Thresholds tuned after training: epochs compete at their best global threshold, not at 0.5."""
    from fishzoo.data import write_digits_multilabel
    csv = write_digits_multilabel(tmp_path / 'ml', images=60)
    args = parse_args(['--train-csv', str(csv), '--output-dir', str(tmp_path / 'run'), '--epochs', '1',
                       '--threshold-tuning', tuning, *TRAIN_ARGS])
    accelerator = create_accelerator(args)
    parts = build_parts(resolve_run(args, accelerator.num_processes), accelerator.num_processes)
    trainer = Trainer(parts.config, accelerator, parts)
    assert trainer.best_metric() == metric
