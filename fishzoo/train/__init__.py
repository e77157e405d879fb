"""Train any timm model with Accelerate, from one CPU to many GPUs, into a hub folder.

Accelerate places the model, runs DDP, mixed precision and gradient accumulation, and saves and restores
the training state; timm gives the optimizer, scheduler, losses, Mixup/CutMix and EMA. The pieces:

    args.py         the flags (timm's train.py names) and YAML recipes
    recipes.py      the defaults chosen by situation (data size, resolution, fine-tuning, multi-label)
    run_config.py   RunConfig: every setting of a run, read-only
    resolve.py      the settings decided once (model source, hold-out, recipe), the data loaded, the model built
    parts.py        data, model, transforms, loaders, optimizer, schedule, loss, Mixup, EMA from the settings
    lr_find.py      the LR range test (--lr-find, --lr auto), an explicit step between resolving and building
    schedule.py     timm's schedulers, one-cycle and plateau behind one interface
    trainer.py      the loop: epochs, validation, NaN and signal stops, threshold tuning
    checkpoints.py  crash-safe checkpoints: atomic save, find, resume, prune
    signals.py      SIGTERM / SIGINT -> a checkpoint and a clean exit
    evaluation.py   gathered validation logits and the metrics
    run_folder.py   the output folder: refusal of another run, metrics, the published hub folder
    command.py      fishzoo-train: all of the above from the command line
"""
try:  # the [train] extra: a base install has the entry point but not these
    import matplotlib  # noqa: F401
    import sklearn  # noqa: F401
    import tqdm  # noqa: F401
    import yaml  # noqa: F401
except ImportError as e:
    raise ImportError(f"fishzoo training needs the [train] extra ({e.name} is missing): "
                      "pip install 'fishzoo[train]'") from None

from fishzoo.errors import ConfigError, TrainingStopped  # noqa: E402

from .args import DIGITS_RECIPE, build_train_parser, load_config, parse_args  # noqa: E402
from .checkpoints import STATE_FILE, CheckpointStore, checkpoint_dirs, find_resume_checkpoint  # noqa: E402
from .command import create_accelerator, main  # noqa: E402
from .lr_find import find_lr  # noqa: E402
from .parts import TrainingParts, build_parts  # noqa: E402
from .resolve import ResolvedRun, resolve_run  # noqa: E402
from .run_config import RunConfig  # noqa: E402
from .run_folder import RunFolder  # noqa: E402
from .trainer import Trainer  # noqa: E402

__all__ = [
    'main', 'Trainer', 'TrainingParts', 'build_parts', 'create_accelerator', 'CheckpointStore', 'RunFolder',
    'RunConfig', 'ResolvedRun', 'resolve_run', 'find_lr',
    'parse_args', 'build_train_parser', 'load_config', 'DIGITS_RECIPE', 'STATE_FILE', 'checkpoint_dirs',
    'find_resume_checkpoint', 'ConfigError', 'TrainingStopped',
]
