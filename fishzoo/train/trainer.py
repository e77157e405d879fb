"""The training loop: ready-built parts in, epochs of training and validation, checkpoints, a hub folder out.

The shape is Accelerate's ``complete_cv_example``: ``prepare`` the model, optimizer and loaders, then
``accumulate`` / ``autocast`` / ``backward`` per batch and ``gather_for_metrics`` for validation. What is
fishzoo's own: an epoch-0 evaluation of the untrained head, NaN detection naming the step, checkpoints that
survive a crash (:mod:`.checkpoints`), stopping on a signal with a checkpoint (:mod:`.signals`),
multi-label threshold tuning, and the published run folder (:mod:`.run_folder`).
"""
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from fishzoo.errors import TrainingStopped
from fishzoo.finetune import GradualUnfreezer, trainable_parameters
from fishzoo.loading import resolve_source
from fishzoo.metrics import multilabel_metrics, tune_thresholds
from fishzoo.shards import StreamLoader

from .checkpoints import CheckpointStore
from .evaluation import metrics_of, predict_loader
from .parts import TrainingParts
from .run_config import RunConfig
from .run_folder import RunFolder, format_record
from .signals import StopSignals

_logger = logging.getLogger('fishzoo.train')

BEST_FILE = 'best_model.safetensors'  # in checkpoints/: the best epoch's weights, kept through a resume


def model_display_name(model_spec: str) -> str:
    """``--model`` as a card may show it: a local folder by its name, never its path on this machine."""
    source = resolve_source(model_spec)
    return source.folder.resolve().name if source.kind == 'folder' else model_spec


def dataset_hub_id(config) -> Optional[str]:
    """The Hub dataset id the card's ``datasets:`` names: ``--dataset-name``, else ``--dataset`` if it is a Hub id."""
    if config.dataset_name:
        return config.dataset_name
    if config.dataset and config.dataset != 'imagefolder':
        return config.dataset
    return None


def validation_source(config) -> str:
    """How the validation images were chosen, for the card's limitations."""
    if config.val_csv:
        return f'listed in {Path(config.val_csv).name}'
    if isinstance(config.val_split, str):
        return f'the {config.val_split} split of {config.dataset}'
    if config.dataset:
        return f'the validation split of {config.dataset}'
    if config.val_split is not None or not config.data_dir:
        return f'{round(100 * (config.val_split or 0.2))}% of the data held out, stratified by class'
    return 'the val/ folder of the data'


def base_model_id(model_spec: str, model: nn.Module) -> Optional[str]:
    """The Hub repo a fine-tune started from, for the card's ``base_model`` (None when it is not on the Hub)."""
    source = resolve_source(model_spec)
    if source.kind == 'hf-hub':
        return source.location.split('@')[0]
    if source.kind == 'timm':
        return model.pretrained_cfg.get('hf_hub_id') or None
    return None


class Trainer:
    """One training run over ``parts``, configured by ``config`` (the resolved settings of ``fishzoo-train``).

    ``store`` and ``folder`` default to a :class:`CheckpointStore` and a :class:`RunFolder` in
    ``config.output_dir``; pass your own to change where (or whether) things are written.
    """

    def __init__(self, config: RunConfig, accelerator: Accelerator, parts: TrainingParts,
                 store: Optional[CheckpointStore] = None, folder: Optional[RunFolder] = None):
        self.config = config
        self.accelerator = accelerator
        self.parts = parts
        self.output_dir = Path(config.output_dir)
        self.store = store or CheckpointStore(accelerator, self.output_dir, keep=config.keep_checkpoints)
        self.folder = folder or RunFolder(self.output_dir)
        if isinstance(parts.train_loader, StreamLoader):
            # streamed shards are divided between the processes by their own plan, not by Accelerate
            self.model, self.optimizer, self.val_loader = accelerator.prepare(
                parts.model, parts.optimizer, parts.val_loader)
            self.train_loader = parts.train_loader
            self.train_loader.device = accelerator.device
        else:
            self.model, self.optimizer, self.train_loader, self.val_loader = accelerator.prepare(
                parts.model, parts.optimizer, parts.train_loader, parts.val_loader)
        self.unfreezer = None
        if config.finetune == 'gradual':
            # built after prepare, so that DDP registered every parameter, frozen ones included
            self.unfreezer = GradualUnfreezer(accelerator.unwrap_model(self.model), config.freeze_epochs,
                                              self.optimizer.optimizer)
        self.signals = StopSignals()
        self.thresholds: Optional[List[float]] = None
        self.tuned_f1: Optional[float] = None
        self.partial: Optional[Dict[str, Any]] = None  # a mid-epoch checkpoint's progress, when resuming one
        self.epoch = 0
        self.num_updates = 0
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None  # {'epoch', 'metric', 'value'} of the best validation so far
        self.best_file = self.output_dir / 'checkpoints' / BEST_FILE

    # checkpoint state -------------------------------------------------------------------------
    def save_checkpoint(self, partial: Optional[Dict[str, Any]] = None) -> Path:
        """A checkpoint of everything; ``partial`` (mid-epoch, on a signal) holds the epoch's progress and sums."""
        ema = self.parts.ema
        state = dict(epoch=self.epoch, num_updates=self.num_updates, history=self.history, best=self.best,
                     schedule=self.parts.schedule.state_dict(),
                     ema=ema.state_dict() if ema is not None else None, partial=partial)
        return self.store.save(state, self.epoch, partial['batches'] if partial else None)

    def load_checkpoint(self, path: Path) -> None:
        state = self.store.load(path)
        self.epoch, self.num_updates, self.history = state['epoch'], state['num_updates'], state['history']
        self.partial = state.get('partial')
        self.best = state.get('best')
        self.parts.schedule.load_state_dict(state['schedule'])
        if self.parts.ema is not None and state.get('ema') is not None:
            self.parts.ema.load_state_dict(state['ema'])
        _logger.info('resumed from %s (epoch %d done)', path, self.epoch)

    # epochs -----------------------------------------------------------------------------------
    def _nan_stop(self, loss: torch.Tensor, batches: int) -> TrainingStopped:
        good = self.store.complete()
        return TrainingStopped(
            f'the loss became {loss.item()} at epoch {self.epoch + 1}, batch {batches + 1} '
            f'(update {self.num_updates + 1}); stopped without saving; '
            + (f'the last good checkpoint is {good[-1]}' if good else 'no checkpoint was written yet'))

    def train_one_epoch(self) -> Dict[str, float]:
        accelerator, config, parts = self.accelerator, self.config, self.parts
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        device = accelerator.device
        # sums stay on the device: a .item() per batch would sync, a kept graph would grow every epoch
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        seen, batches, elapsed = 0, 0, 0.0
        loader = self.train_loader
        if self.partial:  # resuming a checkpoint written mid-epoch: same data order, the done batches skipped
            batches, seen, elapsed = self.partial['batches'], self.partial['seen'], self.partial['seconds']
            loss_sum += self.partial['loss_sum']
            correct += self.partial['correct']
            if isinstance(loader, StreamLoader):  # the stream's plan skips them without decoding
                loader.resume_at(batches, self.partial.get('stream'))
            else:
                loader = accelerator.skip_first_batches(self.train_loader, batches)
            self.partial = None
        counts_correct = not parts.multilabel and parts.mixup is None
        start = time.perf_counter() - elapsed
        for images, targets in tqdm(loader, desc=f'epoch {self.epoch + 1} train', leave=False, mininterval=1.0,
                                    disable=None if accelerator.is_local_main_process else True):
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(self.model):
                hard_targets = targets
                if parts.mixup is not None:
                    images, targets = parts.mixup(images, targets)
                with accelerator.autocast():
                    logits = self.model(images)
                    loss = parts.loss_fn(logits, targets)
                if not torch.isfinite(loss):
                    raise self._nan_stop(loss, batches)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.clip_grad:
                    accelerator.clip_grad_norm_(self.model.parameters(), config.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad()
                if accelerator.sync_gradients:
                    self.num_updates += 1
                    parts.schedule.step_update(self.num_updates)
                    if parts.ema is not None:
                        parts.ema.update(accelerator.unwrap_model(self.model), step=self.num_updates)
            loss_sum += loss.detach() * images.shape[0]
            if counts_correct:
                correct += (logits.detach().argmax(1) == hard_targets).sum()
            seen += images.shape[0]
            batches += 1
            if not accelerator.sync_gradients:
                continue
            stop = self.signals.requested(accelerator)
            if stop or (config.checkpointing_steps and self.num_updates % config.checkpointing_steps == 0
                        and batches < len(self.train_loader)):
                self.save_checkpoint(partial=dict(
                    batches=batches, seen=seen, seconds=time.perf_counter() - start,
                    loss_sum=loss_sum.item(), correct=correct.item(),
                    stream=loader.plan_key() if isinstance(loader, StreamLoader) else None))
            if stop:
                raise TrainingStopped(
                    f'stopped by {signal.Signals(self.signals.signum).name} in epoch {self.epoch + 1} after '
                    f'{batches} batches; checkpoint saved, continue with --resume auto',
                    exit_code=self.signals.exit_code)
        seconds = time.perf_counter() - start
        totals = accelerator.reduce(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)]), 'sum')
        record = dict(train_loss=(totals[0] / totals[2]).item(), img_per_s=totals[2].item() / seconds,
                      train_samples=int(totals[2].item()))  # every process's: what the epoch trained on
        if counts_correct:
            record['train_top1'] = 100.0 * (totals[1] / totals[2]).item()
        return record

    def evaluate(self, model: nn.Module, prefix: str = 'val') -> Dict[str, float]:
        logits, targets = predict_loader(self.accelerator, model, self.val_loader, self.config.channels_last)
        return {f'{prefix}_{k}': v for k, v in metrics_of(logits, targets, self.parts.multilabel).items()}

    def _description(self, source: str) -> str:
        """The card's first sentence: what was trained, from what, on what."""
        config, data = self.config, self.parts.data
        base = model_display_name(config.model)
        arch = self.final_model().pretrained_cfg.get('architecture') or base
        what = f'`{arch}` fine-tuned from `{base}`' if config.pretrained else f'`{base}` trained'
        return (f'{what} with fishzoo-train on {source} ({len(data.train)} training images, '
                f'{self.parts.num_classes} classes).')

    def final_model(self) -> nn.Module:
        return self.parts.ema.module if self.parts.ema is not None else self.accelerator.unwrap_model(self.model)

    def tune_thresholds(self) -> None:
        """Multi-label: thresholds picked on the validation set; F1 before and after goes to the log and metrics."""
        logits, targets = predict_loader(self.accelerator, self.final_model(), self.val_loader,
                                         self.config.channels_last)
        probs, targets = logits.sigmoid().numpy(), targets.numpy()
        before = multilabel_metrics(probs, targets)['f1_micro']
        self.thresholds = tune_thresholds(probs, targets, self.config.threshold_tuning)
        after = multilabel_metrics(probs, targets, self.thresholds)['f1_micro']
        self.history[-1].update(val_f1_micro_tuned=after)
        self.tuned_f1 = after  # the published model's, with the thresholds it is published with
        if self.accelerator.is_main_process:
            _logger.info('threshold tuning (%s): val micro-F1 %.4f at 0.5 -> %.4f with tuned thresholds',
                         self.config.threshold_tuning, before, after)
            self.folder.write_thresholds(self.config.threshold_tuning, before, after, self.parts.data.class_names,
                                         self.thresholds)
            self.folder.write_metrics(self.history)

    # the run ----------------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        """Train to ``--epochs`` (resuming first if asked), then publish the run folder; returns the last record."""
        with self.signals:
            return self._run()

    def _log_record(self, record: Dict[str, Any]) -> None:
        self.history.append(record)
        if self.accelerator.is_main_process:
            print(format_record(record, self.config.epochs), flush=True)
            self.folder.write_metrics(self.history)

    def _run(self) -> Dict[str, Any]:
        accelerator, config, parts = self.accelerator, self.config, self.parts
        if config.resume:
            checkpoint = self.store.find(config.resume)
            if checkpoint is not None:
                self.load_checkpoint(checkpoint)
            else:
                _logger.info('--resume auto: no checkpoint in %s, starting from scratch', self.output_dir)
        if config.report_to != 'none':
            accelerator.init_trackers('fishzoo', config={k: v for k, v in config.as_dict().items()
                                                         if isinstance(v, (int, float, str, bool))})
        if accelerator.is_main_process:
            _logger.info('training %s on %s: %d train / %d val images, %d classes, %d processes', config.model,
                         parts.data.name, len(parts.data.train), len(parts.data.val), parts.num_classes,
                         accelerator.num_processes)
        if self.epoch == 0 and not self.history:
            # epoch 0: the untrained head, a sanity check of the metrics before any update
            self._log_record(dict(epoch=0, **self.evaluate(self.model),
                                  trainable_params=trainable_parameters(self.model)))
        while self.epoch < config.epochs:
            start = time.perf_counter()
            if self.unfreezer is not None:
                self.unfreezer.set_epoch(self.epoch)
            record = dict(epoch=self.epoch + 1, trainable_params=trainable_parameters(self.model))
            record.update(self.train_one_epoch())
            record.update(self.evaluate(self.model))
            if parts.ema is not None:
                record.update(self.evaluate(parts.ema.module, prefix='ema_val'))
            record['lr'] = max(g['lr'] for g in self.optimizer.param_groups)
            record['epoch_seconds'] = time.perf_counter() - start
            self.epoch += 1
            parts.schedule.step_epoch(self.epoch, record.get(self.best_metric().replace('ema_val', 'val')))
            accelerator.log({k: v for k, v in record.items() if k != 'epoch'}, step=record['epoch'])
            self._log_record(record)
            self.keep_if_best(record)
            if self.epoch % config.checkpoint_every == 0 or self.epoch == config.epochs:
                self.save_checkpoint()
        if not config.save_last:
            self.restore_best()
        if parts.multilabel and config.threshold_tuning != 'none':
            self.tune_thresholds()
        self.finish()
        accelerator.end_training()
        return self.history[-1] if self.history else {}

    # the best epoch ------------------------------------------------------------------------------
    def best_metric(self) -> str:
        """The validation metric that picks the published epoch (of the EMA weights when those are published).

        Multi-label runs whose thresholds are tuned afterwards are judged at their best global threshold: the
        0.5 number says more about the outputs' calibration than about the ranking the tuned thresholds use.
        """
        prefix = 'ema_val' if self.parts.ema is not None else 'val'
        if not self.parts.multilabel:
            return f'{prefix}_top1'
        return f"{prefix}_f1_micro{'' if self.config.threshold_tuning == 'none' else '_best'}"

    def keep_if_best(self, record: Dict[str, Any]) -> None:
        """Save the final model's weights when ``record`` beats every earlier epoch (ties keep the earlier)."""
        metric = self.best_metric()
        value = record.get(metric)
        if value is None or (self.best is not None and value <= self.best['value']):
            return
        self.best = dict(epoch=record['epoch'], metric=metric, value=value)
        if self.accelerator.is_main_process:
            self.best_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.best_file.with_name(f'.{BEST_FILE}.tmp')
            state = {k: v.detach().cpu().contiguous() for k, v in self.final_model().state_dict().items()}
            save_file(state, str(tmp))
            os.replace(tmp, self.best_file)
        self.accelerator.wait_for_everyone()

    def restore_best(self) -> None:
        """The best epoch's weights into the final model, unless the last epoch is the best."""
        if self.best is None or self.best['epoch'] == self.epoch or not self.best_file.is_file():
            return
        model = self.final_model()
        state = load_file(str(self.best_file), device=str(next(model.parameters()).device))
        model.load_state_dict(state)
        if self.accelerator.is_main_process:
            _logger.info('publishing epoch %d (%s %.4g), the best; the last epoch (%s %.4g) stays in checkpoints/ '
                         '(--save-last publishes it)', self.best['epoch'], self.best['metric'], self.best['value'],
                         self.best['metric'], self.history[-1].get(self.best['metric'], float('nan')))

    def finish(self) -> None:
        """The hub folder, the curves and (optionally) the upload, from the main process."""
        accelerator, config, parts = self.accelerator, self.config, self.parts
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        published_epoch = self.epoch if config.save_last or self.best is None else self.best['epoch']
        last = next(r for r in self.history if r['epoch'] == published_epoch)
        prefix = 'ema_val' if parts.ema is not None else 'val'
        names = ('f1_micro', 'f1_macro', 'map', 'subset_acc') if parts.multilabel else ('top1', 'top5')
        extra_config = None
        if parts.multilabel:
            # fishzoo predict applies these (sigmoid outputs, one decision threshold per class)
            extra_config = dict(multilabel=True, threshold_tuning=config.threshold_tuning,
                                thresholds=self.thresholds or [0.5] * parts.num_classes)
        data = parts.data
        dataset = dataset_hub_id(config)
        if dataset is None:
            _logger.info("the model card names no dataset in its `datasets:` (a Hub dataset id: --dataset-name)")
        metrics = {k: last[f'{prefix}_{k}'] for k in names if f'{prefix}_{k}' in last}
        if self.tuned_f1 is not None:  # the headline: what the published model decides with
            metrics = {'f1_micro_tuned': self.tuned_f1, **metrics}
        source = dataset or f'local data ({data.name})'
        self.folder.publish(
            self.final_model().float().eval().to(memory_format=torch.contiguous_format), self.history,
            class_names=data.class_names, data_config=parts.data_config, multilabel=parts.multilabel,
            metrics=metrics, extra_config=extra_config, dataset=dataset, epoch=published_epoch,
            base_model=base_model_id(config.model, self.final_model()) if config.pretrained else None,
            description=self._description(source),
            chosen_on_validation=not config.save_last and self.best is not None,
            license=config.license, train_images=len(data.train), val_images=len(data.val),
            validation=validation_source(config),
            push_to=config.push_to_hub, commit_message=f'fishzoo-train: {model_display_name(config.model)}')
