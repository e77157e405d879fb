"""Replacing a folder's files so that a process killed at any instant leaves the old set or the new one.

A hub folder is several files that must agree (``config.json`` records the SHA-256 of ``model.safetensors``,
the card and ``metrics.json`` describe the published epoch), and replacing them one by one passes through
states where they do not. :func:`staged_folder` writes the new files into a sibling folder that holds hard
links to everything else in the folder (checkpoints, the training lock, logs), then exchanges the two folders
in one ``renameat2(RENAME_EXCHANGE)`` call (Linux 3.15+, ext4, xfs, btrfs, tmpfs) and removes the old one.
Where the exchange is not available, the new files are moved in one by one, the weights before the config
that records their checksum (a kill in between leaves a folder refused as corrupted, not a wrong model).
A write that fails (a full disk, a read-only folder) leaves the folder as it was and raises one sentence.
"""
import contextlib
import ctypes
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence, Union

from fishzoo.errors import FishzooError, describe

STAGE_PREFIX = '.publishing-'


class PublishError(FishzooError, RuntimeError):
    """A folder could not be written; it is as it was before."""


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _link_tree(source: Path, target: Path, skip: Sequence[str]) -> None:
    """``target`` mirrors ``source`` with hard links (symbolic links copied as links), top-level ``skip`` left out."""
    for entry in os.scandir(source):
        if entry.name in skip or entry.name.startswith(STAGE_PREFIX):
            continue
        dest = target / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dest)
        elif entry.is_dir():
            dest.mkdir()
            _link_tree(Path(entry.path), dest, ())
        else:
            os.link(entry.path, dest)


def _holds_cwd(folder: Path) -> bool:
    """The process works inside ``folder``: exchanging it would leave the working directory deleted."""
    try:
        cwd, target = Path.cwd().resolve(), folder.resolve()
    except OSError:
        return True
    return cwd == target or target in cwd.parents


def _remove_stale_stages(folder: Path) -> None:
    for stale in folder.parent.glob(f'{STAGE_PREFIX}{folder.name}.*'):
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(folder: Union[str, Path], replaces: Sequence[str], order: Sequence[str] = ()) -> Iterator[Path]:
    """A folder to write the new ``replaces`` files into; on leaving the block they replace ``folder``'s at once.

    ``order`` names files to move first where the folder exchange is unavailable (the weights before the
    config recording their checksum). Raises :class:`PublishError` when writing fails: ``folder`` is untouched.
    """
    folder = Path(folder)
    if folder.is_symlink() or not folder.name:  # exchange the folder a link (or '.') points to, not the link
        folder = folder.resolve()
    stage = folder.parent / f'{STAGE_PREFIX}{folder.name}.{os.getpid()}'
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_stages(folder)
        stage.mkdir()
    except OSError:  # a parent we may not write to: stage inside the folder (files then move one by one)
        stage = folder / f'{STAGE_PREFIX}{folder.name}.{os.getpid()}'
        try:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir()
        except OSError as e:
            raise PublishError(f'{folder}: cannot write there ({e.strerror or e})') from None
    try:
        if folder.is_dir():
            _link_tree(folder, stage, replaces)
        yield stage
        if not folder.exists():
            os.rename(stage, folder)
            return
        if stage.parent != folder and not _holds_cwd(folder) and _exchange(stage, folder):
            shutil.rmtree(stage, ignore_errors=True)  # now the old folder
            return
        names = [n for n in order if (stage / n).exists()] + \
            [n for n in replaces if n not in order and (stage / n).exists()]
        for name in names:
            os.replace(stage / name, folder / name)
        for name in replaces:  # files the new set no longer has
            if name not in names and (folder / name).is_file():
                (folder / name).unlink()
        shutil.rmtree(stage, ignore_errors=True)
    except FishzooError:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    except Exception as e:  # a full disk (OSError, safetensors' own error), a folder that turned read-only
        shutil.rmtree(stage, ignore_errors=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else describe(e)
        raise PublishError(f'{folder}: could not write it ({reason}); it is as it was before') from None
