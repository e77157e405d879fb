"""Replacing a folder's files so that a process killed at any instant leaves the old set or the new one.

A hub folder is several files that must agree (``config.json`` records the SHA-256 of ``model.safetensors``,
the card and ``metrics.json`` describe the published epoch), and replacing them one by one passes through
states where they do not. :func:`staged_folder` writes the new files into a sibling folder that holds hard
links to everything else in the folder (checkpoints, the training lock, logs), then exchanges the two folders
in one ``renameat2(RENAME_EXCHANGE)`` call (Linux 3.15+, ext4, xfs, btrfs, tmpfs) and removes the old one.
Where the exchange is not available, the new files are moved in one by one, the weights before the config
that records their checksum (a kill in between leaves a folder refused as corrupted, not a wrong model).
A write that fails (a full disk, a read-only folder) leaves the folder as it was and raises one sentence.

Where the folder is a mount point (a Docker or Kubernetes volume) or on another file system than its parent,
the stage is made inside it and the files move one by one (hard links and the exchange cannot cross file
systems). Writers of one folder take turns: the second is refused with one sentence while the first writes.
Single files are written the same way (:func:`write_file`): never through a link or a file already at the path.
"""
import contextlib
import ctypes
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator, Sequence, Union

try:
    import fcntl
except ImportError:  # Windows: writers are not serialized there
    fcntl = None

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
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EBUSY):  # EBUSY: a mount point
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


def _remove_stale_stages(where: Path, folder: Path) -> None:
    """Stages a killed writer left (called with the folder's lock held: no other writer is at work)."""
    for stale in where.glob(f'{STAGE_PREFIX}{folder.name}.*'):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def _on_another_file_system(folder: Path) -> bool:
    """A mount point, or a folder on another device than its parent: no hard link or exchange reaches it."""
    try:
        return folder.is_dir() and (os.path.ismount(folder) or os.stat(folder).st_dev != os.stat(folder.parent).st_dev)
    except OSError:
        return False


@contextlib.contextmanager
def _writer_lock(where: Path, folder: Path) -> Iterator[None]:
    """One writer of ``folder`` at a time: an exclusive ``flock`` on a lock file beside the stage; the kernel
    releases it however the holder ends, so a file a killed writer left never blocks."""
    path = where / f'{STAGE_PREFIX}{folder.name}.lock'
    busy = PublishError(f'{folder}: another process is writing it now; write it again once that one is done')
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0), 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy from None
            if os.fstat(fd).st_ino != os.stat(path, follow_symlinks=False).st_ino:
                raise busy  # the file was removed and made anew by a writer that came and went meanwhile
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
    finally:
        os.close(fd)


def write_file(path: Union[str, Path], data: Union[str, bytes]) -> Path:
    """``data`` (text is written as UTF-8) at ``path``, whole or not at all: into a new file beside it, opened so
    that it never follows a link or reuses a file already there, then renamed over ``path`` (which replaces a
    link at ``path`` instead of writing where it points)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp')
    raw = data.encode('utf-8') if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_NOFOLLOW', 0), 0o666)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def staged_folder(folder: Union[str, Path], replaces: Sequence[str], order: Sequence[str] = ()) -> Iterator[Path]:
    """A folder to write the new ``replaces`` files into; on leaving the block they replace ``folder``'s at once.

    ``order`` names files to move first where the folder exchange is unavailable (the weights before the
    config recording their checksum). Raises :class:`PublishError` when writing fails: ``folder`` is untouched.
    """
    folder = Path(folder)
    if folder.is_symlink() or not folder.name:  # exchange the folder a link (or '.') points to, not the link
        folder = folder.resolve()
    with contextlib.ExitStack() as held:
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            where = folder.parent  # the stage's place: beside the folder, so that the two can be exchanged
            if _on_another_file_system(folder) or not os.access(folder.parent, os.W_OK | os.X_OK):
                where = folder  # inside it: the files then move one by one, on the folder's own file system
                folder.mkdir(parents=True, exist_ok=True)
            held.enter_context(_writer_lock(where, folder))
            _remove_stale_stages(where, folder)
            stage = where / f'{STAGE_PREFIX}{folder.name}.{os.getpid()}'
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
            if where != folder and not _holds_cwd(folder) and _exchange(stage, folder):
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
