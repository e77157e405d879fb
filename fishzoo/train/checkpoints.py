"""Checkpoints that survive a crash: written under a temporary name and renamed when complete, found, resumed
from and pruned.

A checkpoint is a folder ``checkpoints/epoch_NNNN`` (or ``epoch_NNNN_batch_NNNNNN`` when a signal stopped the
run mid-epoch) holding Accelerate's state (model, optimizer, random states) and fishzoo's own
``fishzoo_state.pt`` (epoch, history, schedule, EMA). Everything is read with safetensors or
``torch.load(weights_only=True)``: a file that would run code when unpickled is refused.
"""
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError

from fishzoo.errors import ConfigError, TrainingStopped, first_line

STATE_FILE = 'fishzoo_state.pt'  # fishzoo's part of a checkpoint, next to Accelerate's files


def checkpoint_position(path: Path) -> Optional[Tuple[int, int]]:
    """(epochs done, batches into the next epoch) from 'epoch_0003' or 'epoch_0003_batch_000012'."""
    parts = path.name.split('_')
    try:
        return int(parts[1]), int(parts[3]) if len(parts) == 4 and parts[2] == 'batch' else 0
    except (IndexError, ValueError):
        return None


def checkpoint_dirs(output_dir: Path) -> List[Path]:
    """Complete checkpoints, oldest first (a folder is complete once renamed from its .tmp name)."""
    root = Path(output_dir) / 'checkpoints'
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith('epoch_') and (p / STATE_FILE).is_file()
             and checkpoint_position(p) is not None]
    return sorted(found, key=checkpoint_position)


def find_resume_checkpoint(output_dir: Path, resume: str) -> Optional[Path]:
    """``--resume auto``: the newest complete checkpoint (None if there is none); else the folder given."""
    if resume == 'auto':
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f'--resume {resume}: not a complete fishzoo checkpoint folder (no {STATE_FILE})')
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _contiguous_weights(models, weights, output_dir):
    """Accelerate save-state hook: safetensors refuses channels_last (non-contiguous) weights."""
    for i, state in enumerate(weights):
        weights[i] = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


class CheckpointStore:
    """The checkpoints of one run, in ``output_dir/checkpoints``, the newest ``keep`` kept.

    ``save_state`` writes Accelerate's part into a folder (default: ``accelerator.save_state``); a test passes
    one that fails to see what a full disk does.
    """

    def __init__(self, accelerator: Accelerator, output_dir: Path, keep: int = 2,
                 save_state: Optional[Callable[[str], Any]] = None):
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.root = self.output_dir / 'checkpoints'
        self.keep = keep
        self._save_state = save_state or accelerator.save_state
        accelerator.register_save_state_pre_hook(_contiguous_weights)

    def complete(self) -> List[Path]:
        return checkpoint_dirs(self.output_dir)

    def find(self, resume: str) -> Optional[Path]:
        return find_resume_checkpoint(self.output_dir, resume)

    def save(self, state: Dict[str, Any], epoch: int, batches: Optional[int] = None) -> Path:
        """Accelerate's state plus ``state`` (fishzoo's), under a .tmp name renamed when complete.

        ``batches`` names a mid-epoch checkpoint. A failed write (a full disk) removes the .tmp folder, leaves
        the previous checkpoint as it was and stops the run with one sentence.
        """
        accelerator = self.accelerator
        name = f'epoch_{epoch:04d}' + (f'_batch_{batches:06d}' if batches is not None else '')
        final, tmp = self.root / name, self.root / f'.{name}.tmp'
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        try:
            self._save_state(str(tmp))
            if accelerator.is_main_process:
                torch.save(state, tmp / STATE_FILE)
                for f in tmp.iterdir():
                    with open(f, 'rb') as fh:
                        os.fsync(fh.fileno())
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            previous = self.complete()
            kept = f'the previous checkpoint {previous[-1]} is intact' if previous else 'no earlier checkpoint exists'
            raise TrainingStopped(f'could not write checkpoint {final} ({e.strerror or e}); {kept}; '
                                  'free space and continue with --resume auto') from None
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            fsync_dir(self.root)
            for old in self.complete()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load(self, path: Path) -> Dict[str, Any]:
        """Restore Accelerate's state from ``path`` and return fishzoo's state dict."""
        try:
            # Accelerate logs and skips random-state files it cannot read; a resume without them would not
            # be exact, so they are read (weights_only, as Accelerate does) and refused here first
            for rng_file in sorted(path.glob('random_states_*.pkl')):
                accelerate_load(rng_file)
            self.accelerator.load_state(str(path))
            return torch.load(path / STATE_FILE, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as e:
            raise ConfigError(f'--resume {path}: refused a file that is not plain tensors and numbers '
                              f'({first_line(e, 200)})') from None
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, SafetensorError) as e:
            reason = first_line(e, 200) if str(e).strip() else 'corrupted'
            raise ConfigError(f'--resume {path}: the checkpoint cannot be loaded ({type(e).__name__}: '
                              f'{reason})') from None
