"""fishzoo.hub.atomic: a folder replaced so that a kill at any instant leaves the old or the new one."""
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm

import fishzoo
from fishzoo.cli import main
from fishzoo.hub import save_pretrained
from fishzoo.train import checkpoint_dirs
from fishzoo.train import main as train_main
from tests.conftest import TRAIN_ARGS
from tests.helpers.hostile import (
    class_tree,
    folder_bytes,
    one_line,
)


@pytest.mark.slow
def test_a_full_disk_while_publishing_leaves_the_folder_as_it_was(hub_folder, monkeypatch, tmp_path, capsys):
    """safetensors' SafetensorError / OSError came out as a traceback, the folder half replaced."""
    import errno

    import fishzoo.hub.save
    _, folder = hub_folder
    before = folder_bytes(folder)

    def full_disk(model, save_dir, **kwargs):
        (Path(save_dir) / 'model.safetensors').write_bytes(b'\0' * 1000)  # a part written, then no space
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(fishzoo.hub.save, 'save_for_hf', full_disk)
    with pytest.raises(fishzoo.FishzooError, match=re.escape(
            f'{folder}: could not write it (No space left on device); it is as it was before')):
        save_pretrained(timm.create_model('fishnet_s64', num_classes=3), folder, label_names=['a', 'b', 'c'])
    assert folder_bytes(folder) == before and not list(tmp_path.glob('.publishing-*'))
    fishzoo.load_model(str(folder))

    # the same in a training run: one line, the checkpoints kept, and --resume auto publishes afterwards
    out = tmp_path / 'run'
    data_dir = class_tree(tmp_path / 'data', per_class=6)
    args = ['--data-dir', str(data_dir), '--output-dir', str(out), '--epochs', '1', *TRAIN_ARGS]
    assert train_main(args) == 2
    one_line(capsys, f'{out}: could not write it (No space left on device); it is as it was before')
    assert checkpoint_dirs(out) and not (out / 'model.safetensors').exists()
    monkeypatch.undo()
    assert train_main(args + ['--resume', 'auto']) == 0
    fishzoo.load_model(str(out))


_REPUBLISH = '''
import sys, time, timm, torch
import timm.models._hub
from fishzoo.cli import main
from fishzoo.hub import save_pretrained
folder, = sys.argv[1:]
write_config = timm.models._hub.save_config_for_hf
def slow_disk(*args, **kwargs):  # the weights are written; the config follows 0.3 s later
    time.sleep(0.3)
    return write_config(*args, **kwargs)
timm.models._hub.save_config_for_hf = slow_disk
models = [timm.create_model('fishnet_s64', num_classes=3) for _ in range(2)]
print('ready', flush=True)
while True:
    for model in models:
        save_pretrained(model, folder, label_names=['a', 'b', 'c'])
'''


@pytest.mark.slow
def test_kill_9_while_republishing_leaves_a_loadable_folder(hub_folder, tmp_path):
    """SIGKILL during a re-publish left new weights with the old config's checksum: refused as corrupted."""
    _, folder = hub_folder
    rng = random.Random(0)
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, '-c', _REPUBLISH, str(folder)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == 'ready'
        time.sleep(rng.uniform(0.05, 0.6))
        proc.kill()
        proc.wait()
        fishzoo.load_model(str(folder))  # the old folder or the new one, never neither
        config = json.loads((folder / 'config.json').read_text())
        assert config['weights_sha256'] == fishzoo.hub.sha256_file(folder / 'model.safetensors')


def test_publishing_through_a_link_or_into_the_working_directory(tmp_path, monkeypatch):
    """The exchange swaps the folder a link points to (not the link), and never the working directory (the
    process would be left in a deleted one): there the files move one by one."""
    from fishzoo.hub.atomic import staged_folder
    real = tmp_path / 'real'
    real.mkdir()
    (real / 'keep.txt').write_text('checkpoint')
    os.symlink(real, tmp_path / 'link')
    with staged_folder(tmp_path / 'link', ('a.txt',)) as stage:
        (stage / 'a.txt').write_text('new')
    assert (tmp_path / 'link').is_symlink() and (real / 'a.txt').read_text() == 'new'
    monkeypatch.chdir(real)
    with staged_folder('.', ('a.txt',)) as stage:
        (stage / 'a.txt').write_text('newer')
    assert os.getcwd() == str(real) and Path('a.txt').read_text() == 'newer' and Path('keep.txt').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['link', 'real']  # no stage left


def _outside(tmp_path):
    target = tmp_path / 'outside.txt'
    target.write_text('not yours')
    return target


def test_write_file_replaces_a_planted_link_instead_of_writing_through_it(tmp_path):
    from fishzoo.hub.atomic import write_file
    target = _outside(tmp_path)
    (tmp_path / 'run').mkdir()
    os.symlink(target, tmp_path / 'run' / 'metrics.json')
    write_file(tmp_path / 'run' / 'metrics.json', '{}')
    assert target.read_text() == 'not yours'
    written = tmp_path / 'run' / 'metrics.json'
    assert not written.is_symlink() and written.read_text() == '{}'


def test_upgrade_never_writes_through_a_link_in_the_folder(hub_folder, tmp_path, capsys):
    """fishzoo upgrade wrote a temporary .config.json.tmp that a link already there sent outside, then renamed it
    over config.json; a config.json that is itself a link was rewritten where it pointed."""
    _, folder = hub_folder
    target = _outside(tmp_path)
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps({**config, 'model_args': {'num_classes': 3}}))  # needs upgrading
    os.symlink(target, folder / '.config.json.tmp')
    assert main(['upgrade', str(folder)]) == 0
    assert target.read_text() == 'not yours'
    assert 'num_classes' not in json.loads((folder / 'config.json').read_text())['model_args']
    elsewhere = tmp_path / 'elsewhere.json'
    elsewhere.write_text(json.dumps({**config, 'model_args': {'num_classes': 3}}))
    (folder / 'config.json').unlink()
    os.symlink(elsewhere, folder / 'config.json')
    assert main(['upgrade', str(folder)]) == 0
    assert 'num_classes' in json.loads(elsewhere.read_text())['model_args']  # the file it pointed to: untouched
    assert not (folder / 'config.json').is_symlink()


def test_upgrade_on_a_read_only_file_system_is_one_sentence(hub_folder, capsys, monkeypatch):
    """A traceback before; the kernel says EROFS there (root ignores permission bits, so it is simulated)."""
    import errno
    _, folder = hub_folder
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps({**config, 'model_args': {'num_classes': 3}}))  # needs upgrading
    before = (folder / 'config.json').read_text()
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if str(folder.parent) in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(os, 'mkdir', read_only)
    assert main(['upgrade', str(folder)]) == 2
    one_line(capsys, 'cannot write there (Read-only file system)')
    assert (folder / 'config.json').read_text() == before


def _mounted(path):
    """``path`` as a fresh tmpfs mount point (a Docker or Kubernetes volume), or None where mounting is refused."""
    path.mkdir()
    proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', str(path)], capture_output=True)
    return path if proc.returncode == 0 else None


def test_publishing_into_a_mount_point(tmp_path, monkeypatch):
    """The stage was made in the parent: hard links crossed file systems (EXDEV) and exchanging a mount point gave
    EBUSY, so `--output-dir /out` on a volume trained every epoch and then failed to publish."""
    from fishzoo.hub import atomic
    model = timm.create_model('fishnet_s64', num_classes=3).eval()
    volume = _mounted(tmp_path / 'volume')
    try:
        if volume is None:  # no mount permission here: the same decision, made for a folder we say is one
            volume = tmp_path / 'volume'
            monkeypatch.setattr(atomic, '_on_another_file_system', lambda folder: folder == volume)
        (volume / 'checkpoints').mkdir()
        (volume / 'checkpoints' / 'keep').write_text('kept')
        for labels in (['a', 'b', 'c'], ['x', 'y', 'z']):  # a first publish, and a re-publish over it
            save_pretrained(model, volume, label_names=labels)
            assert fishzoo.load_model(str(volume)).pretrained_cfg['label_names'] == labels
        assert (volume / 'checkpoints' / 'keep').read_text() == 'kept'
        assert not [p.name for p in volume.iterdir() if p.name.startswith('.publishing-')]
    finally:
        subprocess.run(['umount', str(tmp_path / 'volume')], capture_output=True)


_WRITER = '''
import sys, timm
from fishzoo.cli import main
from fishzoo.hub import save_pretrained
from fishzoo.errors import FishzooError
folder, labels = sys.argv[1], sys.argv[2].split(',')
model = timm.create_model('fishnet_s64', num_classes=3)
try:
    save_pretrained(model, folder, label_names=labels)
    print('wrote')
except FishzooError as e:
    print('refused', e)
'''


def test_concurrent_writers_take_turns_and_the_losers_get_a_sentence(tmp_path):
    """Three processes saving into one folder deleted each other's stages; the losers said 'No such file or
    directory'. Now a second writer is refused while the first writes, and the folder always loads."""
    from fishzoo.hub.atomic import staged_folder
    model = timm.create_model('fishnet_s64', num_classes=3)
    folder = save_pretrained(model, tmp_path / 'hub', label_names=['a'] * 3)
    with staged_folder(folder, ('config.json',)):
        with pytest.raises(fishzoo.FishzooError, match=f'{folder}: another process is writing it now'):
            save_pretrained(model, folder, label_names=['b'] * 3)
    writers = [subprocess.Popen([sys.executable, '-c', _WRITER, str(folder), ','.join([c] * 3)], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in 'xyz']
    outcomes = [w.communicate(timeout=300)[0].strip() for w in writers]
    busy = f'refused {folder}: another process is writing it now'
    assert all(o == 'wrote' or o.startswith(busy) for o in outcomes), outcomes
    assert 'wrote' in outcomes
    assert fishzoo.load_model(str(folder)).pretrained_cfg['label_names'][0] in 'xyz'
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith('.publishing-')]
