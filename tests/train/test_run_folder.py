"""The output folder of a run: one run at a time, nothing left behind by a failure, one sentence."""
import os
import time

import pytest

from fishzoo.train import main as train_main
from tests.conftest import TRAIN_ARGS
from tests.helpers.hostile import (
    one_line,
    start_training,
)


@pytest.mark.slow
def test_second_run_on_the_same_output_dir_is_refused(image_dataset, tmp_path, capsys):
    """Two trainings on one folder would write into each other's checkpoints: the second is refused, naming
    the first's process; once the first is killed with -9 its lock is gone and a resume runs."""
    args = ['--data-dir', str(image_dataset), '--epochs', '3', *TRAIN_ARGS]
    out = tmp_path / 'shared'
    proc = start_training(args, out)
    try:
        deadline = time.monotonic() + 300
        lock = out / '.fishzoo-train.lock'
        while not (lock.exists() and lock.read_text().strip() == str(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for extra in ([], ['--resume', 'auto'], ['--overwrite']):
            assert train_main([*args, '--output-dir', str(out), *extra]) == 2
            one_line(capsys, f'--output-dir {out} is in use by another fishzoo-train run (process {proc.pid}')
    finally:
        proc.kill()
        proc.wait()
    assert train_main([*args, '--output-dir', str(out), '--resume', 'auto']) == 0  # kill -9 released the lock
    assert not lock.exists()


def test_a_failed_run_says_one_thing_and_leaves_no_empty_folder(tmp_path, capsys):
    """A missing --data-dir said "holding out 20%" first; the failed run left an empty output folder."""
    out = tmp_path / 'never'
    assert train_main(['--data-dir', str(tmp_path / 'nope'), '--output-dir', str(out), *TRAIN_ARGS]) == 2
    one_line(capsys, f'--data-dir {tmp_path / "nope"}: no such directory')
    assert not out.exists()
    blocker = tmp_path / 'a-file'
    blocker.write_text('x')
    assert train_main(['--output-dir', str(blocker / 'run'), '--epochs', '1', *TRAIN_ARGS]) == 2
    one_line(capsys, f'--output-dir {blocker / "run"}: cannot create it (')


def test_a_read_only_output_dir_gets_one_sentence(tmp_path, capsys, monkeypatch):
    """The kernel says EROFS on a read-only mount (root ignores permission bits, so it is simulated here)."""
    import errno
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path / 'ro')) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)
    (tmp_path / 'ro').mkdir()
    monkeypatch.setattr(os, 'open', read_only)
    assert train_main(['--output-dir', str(tmp_path / 'ro'), '--epochs', '1', *TRAIN_ARGS]) == 2
    one_line(capsys, f'--output-dir {tmp_path / "ro"}: cannot write there (Read-only file system)')


def test_a_run_never_writes_through_links_in_its_output_dir(image_dataset, tmp_path, capsys):
    """A folder from someone else (a tarball, a git clone) can hold links: the run's own files replace them,
    and a link at the lock's name is refused rather than truncated where it points."""
    target = tmp_path / 'outside.txt'
    target.write_text('not yours')
    out = tmp_path / 'run'
    out.mkdir()
    for name in ('train_config.yaml', 'val_images.csv', 'metrics.json'):
        os.symlink(target, out / name)
    args = ['--data-dir', str(image_dataset), '--epochs', '1', *TRAIN_ARGS]
    assert train_main([*args, '--output-dir', str(out), '--overwrite']) == 0
    assert target.read_text() == 'not yours'
    assert not any((out / name).is_symlink() for name in ('train_config.yaml', 'val_images.csv', 'metrics.json'))
    locked = tmp_path / 'locked'
    locked.mkdir()
    os.symlink(target, locked / '.fishzoo-train.lock')
    assert train_main([*args, '--output-dir', str(locked)]) == 2
    one_line(capsys, f'--output-dir {locked}: .fishzoo-train.lock is a symbolic link; remove it')
    assert target.read_text() == 'not yours'


def test_a_slow_rate_keeps_two_figures():
    """0.66 img/s was printed as "img_per_s 1"."""
    from fishzoo.train.run_folder import format_record
    assert 'img_per_s 0.66' in format_record(dict(epoch=1, img_per_s=0.6612), 3)
    assert 'img_per_s 1130' in format_record(dict(epoch=1, img_per_s=1130.4), 3)
