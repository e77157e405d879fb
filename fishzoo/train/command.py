"""``fishzoo-train``: parse the flags, set up Accelerate, build the parts, run the trainer, exit with one line.

    accelerate launch scripts/train.py                      # the embedded digits, a low-res FishNet
    accelerate launch scripts/train.py --data-dir DIR --model fishnet99 --pretrained --num-classes 10
    accelerate launch --multi_gpu --num_processes 2 -m fishzoo.train --config configs/digits.yaml
    fishzoo-train --help
"""
import argparse
import contextlib
import faulthandler
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import timm
import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import DistributedDataParallelKwargs, set_seed

from fishzoo.data import write_split
from fishzoo.errors import FishzooError, TrainingStopped
from fishzoo.images import refuse_bombs_quietly
from fishzoo.precision import for_training
from fishzoo.precision_probe import ProbeWork, probe_runs

from .args import parse_args, write_train_config
from .lr_find import find_lr
from .parts import build_parts
from .resolve import resolve_run, settled_lr
from .run_folder import OutputDirLock, prepare_output_dir
from .trainer import Trainer

_logger = logging.getLogger('fishzoo.train')


def distributed_on_cpu() -> bool:
    """Launched as several processes (torchrun / accelerate launch) on a machine without CUDA.

    Accelerate then needs cpu=True to join the processes with gloo; otherwise each runs alone.
    """
    launched = int(os.environ.get('WORLD_SIZE', '1')) > 1 or int(os.environ.get('LOCAL_RANK', '-1')) != -1
    return launched and not torch.cuda.is_available()


def training_work(args: argparse.Namespace) -> Optional[ProbeWork]:
    """The run's model and batch for the precision probe, built before the Accelerator (which takes the
    precision): a timm name only (a folder's model is the table's to judge); None where it cannot be had."""
    if args.mixed_precision not in (None, 'auto') or not probe_runs() \
            or not timm.is_model(str(args.model).split('.')[0]):
        return None  # nothing will be measured: no model is built for it
    try:
        model = timm.create_model(str(args.model).split('.')[0], num_classes=10, in_chans=args.in_chans or 3)
    except Exception:  # the run itself reports a model it cannot build
        return None
    _, height, width = model.pretrained_cfg.get('input_size', (3, 224, 224))
    size = (args.img_size, args.img_size) if args.img_size else (height, width)
    # a batch of 8 shows the kernels' speed; the run's own batch would only make the probe longer
    return ProbeWork(model, (args.in_chans or 3, *size), batch=min(args.batch_size, 8), training=True)


def mixed_precision(asked: Optional[str], device: torch.device, work: Optional[ProbeWork] = None) -> Optional[str]:
    """``Accelerator(mixed_precision=...)`` for ``--mixed-precision asked`` on ``device``: the precision policy's
    decision (:func:`fishzoo.precision.for_training`, measuring ``work`` for 'auto' on a CPU), None where
    Accelerate's own configuration decides."""
    decided = for_training(asked, device, work=work)
    return None if decided is None else decided.mixed_precision


def create_accelerator(args: argparse.Namespace) -> Accelerator:
    """The Accelerator the flags ask for (mixed precision, accumulation, trackers, compile), seeded."""
    # gradual unfreezing switches requires_grad after DDP is built: frozen parameters are "unused"
    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=args.finetune == 'gradual')
    accelerator = Accelerator(
        kwargs_handlers=[ddp_kwargs],
        gradient_accumulation_steps=args.grad_accum_steps,
        mixed_precision=mixed_precision(args.mixed_precision, PartialState().device,
                                        training_work(args) if PartialState().device.type == 'cpu' else None),
        log_with=None if args.report_to == 'none' else args.report_to,
        project_dir=str(args.output_dir),
        # pinned batches (the loader pins them for CUDA) copy to the device while the step before runs
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                  non_blocking=PartialState().device.type == 'cuda'),
        dynamo_backend=args.compile or 'no',
        cpu=distributed_on_cpu(),
    )
    set_seed(args.seed)
    if accelerator.device.type == 'cpu':
        # launchers set OMP_NUM_THREADS=1; on CPU each local process should get its share of the cores
        local_processes = int(os.environ.get('LOCAL_WORLD_SIZE', accelerator.num_processes))
        share = max(1, len(os.sched_getaffinity(0)) // local_processes)
        torch.set_num_threads(max(torch.get_num_threads(), share))
    return accelerator


def main(argv: Optional[List[str]] = None) -> int:
    # a fatal error (a segfault in a native library, an abort) still leaves every thread's Python stack
    if not faulthandler.is_enabled():
        try:  # the process's own stderr: a captured sys.stderr (a notebook, a test) has no file descriptor
            faulthandler.enable(file=sys.__stderr__)
        except (AttributeError, OSError, ValueError):
            pass
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    logging.getLogger('fishzoo').setLevel(logging.INFO)
    refuse_bombs_quietly()
    created = None
    try:
        args = parse_args(argv)
        created = None if Path(args.output_dir).exists() else Path(args.output_dir)
        state = PartialState(cpu=distributed_on_cpu())
        # the main process holds the folder for the whole run; a second run on it is refused
        with OutputDirLock(args.output_dir) if state.is_main_process else contextlib.nullcontext():
            prepare_output_dir(args, state)
            accelerator = create_accelerator(args)
            run = resolve_run(args, accelerator.num_processes, accelerator.device)
            if args.lr_find or args.lr == 'auto':
                suggestion = find_lr(run, accelerator.device)
                if args.lr != 'auto':  # the range test was the job: its suggestion is in the log and lr_find.json
                    print(f'suggested lr: {suggestion:.2e} (train with --lr auto, or pass it as --lr)', flush=True)
                    return 0
                run = run.replace_config(lr=settled_lr(suggestion))
                _logger.info('--lr auto: training with lr %g', run.config.lr)
            parts = build_parts(run, accelerator.num_processes, accelerator.device, accelerator.process_index)
            if accelerator.is_main_process:  # the run's every setting, as a recipe --config reads back
                write_train_config(run.config)
                write_split(run.data, run.config.output_dir)  # export --val-data OUTPUT_DIR: the held-out images
            Trainer(run.config, accelerator, parts).run()
    except FishzooError as e:
        if created is not None and not isinstance(e, TrainingStopped):
            with contextlib.suppress(OSError):  # a run that failed before writing anything leaves no folder
                created.rmdir()
        print(f'fishzoo-train: {e}', file=sys.stderr)
        return e.exit_code
    return 0
