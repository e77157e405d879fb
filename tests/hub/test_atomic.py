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
