"""fishzoo-train end to end: a real run and its outputs, options, pretrained heads, two processes, trackers,
the hub upload, and one line for every bad input."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file

import fishzoo  # noqa: F401
from fishzoo import data, train
from fishzoo.hub import save_pretrained
from fishzoo.train import main
from fishzoo.train import main as train_main
from tests.conftest import TRAIN_ARGS
from tests.helpers.hostile import (
    REPO,
    evil_checkpoint,
    one_line,
)


def test_end_to_end_outputs(trained_run, image_dataset):
    out = trained_run
    assert {'model.safetensors', 'config.json', 'README.md', 'metrics.json', 'curves.png'} <= \
        {p.name for p in out.iterdir()}
    history = json.loads((out / 'metrics.json').read_text())
    assert [r['epoch'] for r in history] == [0, 1, 2, 3]  # epoch 0: the untrained head
    for key in ('train_loss', 'val_loss', 'val_top1', 'val_top5', 'lr', 'img_per_s', 'epoch_seconds'):
        assert all(isinstance(r[key], float) for r in history[1:]), key
    assert all(r['val_samples'] == 12 for r in history)
    assert history[-1]['train_loss'] < history[1]['train_loss']
    assert [p.name for p in train.checkpoint_dirs(out)] == ['epoch_0002', 'epoch_0003']  # --keep-checkpoints 2
    config = json.loads((out / 'config.json').read_text())
    assert config['label_names'] == ['cat', 'dog', 'fish']
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32]
    assert 'Top-1 accuracy' in (out / 'README.md').read_text()
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert model.num_classes == 3 and list(model.pretrained_cfg['label_names']) == ['cat', 'dog', 'fish']
    assert (out / 'curves.png').read_bytes()[:4] == b'\x89PNG'


def test_grayscale_training(image_dataset, tmp_path):
    out = tmp_path / 'gray'
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(out), '--epochs', '1', '--in-chans', '1',
                 *TRAIN_ARGS]) == 0
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert model.stem.conv1.conv.in_channels == 1


@pytest.mark.parametrize('extra', [
    ['--sched', 'step', '--decay-epochs', '1', '--mixup', '0.2', '--cutmix', '1.0', '--smoothing', '0.1'],
    ['--sched', 'plateau', '--opt', 'sgd', '--lr', '0.01', '--model-ema', '--model-ema-decay', '0.9'],
    ['--sched', 'onecycle', '--opt', 'sgd', '--lr', '0.01', '--layer-decay', '0.8', '--grad-accum-steps', '2',
     '--clip-grad', '1.0'],
    ['--dataset', 'imagefolder', '--reprob', '0.5', '--rotate', '20', '--grad-checkpointing', '--channels-last'],
])
@pytest.mark.slow
def test_training_options(image_dataset, tmp_path, extra):
    out = tmp_path / 'run'
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(out), '--epochs', '2', *TRAIN_ARGS,
                 *extra]) == 0
    history = json.loads((out / 'metrics.json').read_text())
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(r['train_loss'])) for r in history[1:])
    if '--model-ema' in extra:
        assert 'ema_val_top1' in history[-1]
    if '--sched' in extra and extra[extra.index('--sched') + 1] in ('step', 'onecycle'):
        assert history[1]['lr'] != history[2]['lr']


def test_pretrained_head_is_replaced_and_logged(image_dataset, tmp_path, caplog):
    source = tmp_path / 'pretrained'
    save_pretrained(timm.create_model('fishnet_s64', num_classes=5), source)
    with caplog.at_level('INFO', logger='fishzoo.train'):
        assert main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'ft'), '--epochs', '1',
                     *TRAIN_ARGS, '--model', f'local-dir:{source}', '--pretrained']) == 0
    assert 'replaced the classifier: 5 -> 3 classes; re-initialised fc.weight, fc.bias' in caplog.text


def test_pretrained_head_for_other_labels_is_replaced(trained_run, image_dataset, tmp_path, caplog):
    """Same number of classes, other label names: the old head would silently map old classes to new ones."""
    renamed = tmp_path / 'renamed'
    shutil.copytree(image_dataset, renamed)
    for split in ('train', 'val'):
        for old, new in (('cat', 'ant'), ('dog', 'bee'), ('fish', 'cow')):
            (renamed / split / old).rename(renamed / split / new)
    with caplog.at_level('INFO', logger='fishzoo.train'):
        assert main(['--data-dir', str(renamed), '--output-dir', str(tmp_path / 'ft'), '--epochs', '1',
                     *TRAIN_ARGS, '--model', f'local-dir:{trained_run}', '--pretrained']) == 0
    assert 'replaced the classifier: 3 -> 3 classes (labels cat,dog,fish -> ant,bee,cow)' in caplog.text
    caplog.clear()
    with caplog.at_level('INFO', logger='fishzoo.train'):
        assert main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'same'), '--epochs', '1',
                     *TRAIN_ARGS, '--model', f'local-dir:{trained_run}', '--pretrained']) == 0
    assert 'replaced the classifier' not in caplog.text  # same classes: the trained head is kept


@pytest.mark.slow
def test_two_processes_gather_every_val_image_once(tmp_path):
    from tests.helpers.images import make_train_val
    data = make_train_val(tmp_path / 'odd', train=8, val=3)  # 9 val images: uneven across 2 processes
    out = tmp_path / 'ddp'
    proc = subprocess.run(
        ['accelerate', 'launch', '--multi_gpu', '--num_processes', '2', str(REPO / 'scripts' / 'train.py'),
         '--data-dir', str(data), '--output-dir', str(out), '--epochs', '1', *TRAIN_ARGS],
        capture_output=True, text=True, timeout=600, env={**os.environ, 'PYTHONPATH': str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '2 processes' in proc.stdout + proc.stderr
    history = json.loads((out / 'metrics.json').read_text())
    assert [r['val_samples'] for r in history] == [9, 9]
    assert (out / 'model.safetensors').exists()


def _fails_with(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('fishzoo-train: '), err
    assert message in err[0], err[0]


def test_bad_inputs_get_one_line(image_dataset, tmp_path, capsys):
    out = ['--output-dir', str(tmp_path / 'o')]
    _fails_with(capsys, ['--data-dir', str(tmp_path / 'missing'), *out], f'--data-dir {tmp_path / "missing"}: no such')
    (tmp_path / 'empty').mkdir()
    _fails_with(capsys, ['--data-dir', str(tmp_path / 'empty'), '--val-split', '0.2', *out], 'no images found')
    _fails_with(capsys, ['--data-dir', str(image_dataset), *out, *TRAIN_ARGS, '--batch-size', '500'],
                '--batch-size 500 (x 1 process) is larger than the training set (24 images)')
    _fails_with(capsys, ['--data-dir', str(image_dataset), *out, '--model', 'fishnet_nope'],
                '--model fishnet_nope: unknown model')
    _fails_with(capsys, ['--epochs', '0', *out], '--epochs must be at least 1, got 0')
    (tmp_path / 'labels.csv').write_text('image,labels\nnope.png,a\n')
    _fails_with(capsys, ['--train-csv', str(tmp_path / 'labels.csv'), '--val-split', '0.5', *out],
                'line 2: image')


def test_output_dir_with_another_run_is_refused(trained_run, capsys):
    _fails_with(capsys, ['--output-dir', str(trained_run)], 'holds another run')


def test_strict_images(image_dataset, tmp_path, capsys):
    data = tmp_path / 'ds'
    shutil.copytree(image_dataset, data)
    (data / 'train' / 'cat' / 'broken.png').write_bytes(b'\x89PNG not really')
    _fails_with(capsys, ['--data-dir', str(data), '--output-dir', str(tmp_path / 'o'), '--strict-images'],
                'broken.png: unreadable image')


def test_nan_loss_stops_with_the_step(image_dataset, tmp_path, capsys):
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'nan'), '--epochs', '3',
                 *TRAIN_ARGS, '--opt', 'sgd', '--lr', '1e12']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(
        r'fishzoo-train: the loss became (nan|inf|-inf) at epoch \d+, batch \d+ \(update \d+\); stopped without '
        r'saving; (the last good checkpoint is \S+|no checkpoint was written yet)', err[0]), err


def test_optimizer_mistakes_are_named(image_dataset, tmp_path, capsys):
    _fails_with(capsys, ['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'm0'), *TRAIN_ARGS,
                         '--opt', 'sgd', '--momentum', '0'], '--opt sgd: Nesterov momentum requires')
    _fails_with(capsys, ['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), *TRAIN_ARGS,
                         '--opt', 'nope'], '--opt nope:')


def test_tensorboard_tracker(image_dataset, tmp_path):
    out = tmp_path / 'tb'
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(out), '--epochs', '1', *TRAIN_ARGS,
                 '--report-to', 'tensorboard']) == 0
    assert list(out.rglob('events.out.tfevents.*'))


@pytest.mark.slow
def test_entry_points():
    for cmd in ([sys.executable, '-m', 'fishzoo.train', '--help'], ['fishzoo-train', '--help'],
                [sys.executable, str(REPO / 'scripts' / 'train.py'), '--help']):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and '--grad-accum-steps' in proc.stdout, cmd


def test_push_to_hub_after_training(image_dataset, tmp_path, monkeypatch):
    import huggingface_hub.hf_api
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import CommitInfo, RepoUrl
    sent = []
    monkeypatch.setenv('HF_TOKEN', 'hf_abcdefghijklmnop')
    monkeypatch.setattr(huggingface_hub.hf_api, 'is_xet_available', lambda: False)
    monkeypatch.setattr(HfApi, 'create_repo', lambda api, repo_id, **kw: RepoUrl(f'https://huggingface.co/{repo_id}'))
    monkeypatch.setattr(HfApi, '_validate_yaml', lambda api, content, **kw: None)
    monkeypatch.setattr(HfApi, 'create_commit', lambda api, repo_id, operations, **kw: sent.extend(
        op.path_in_repo for op in operations) or CommitInfo(commit_url='https://huggingface.co/me/shapes/commit/1',
                                                          commit_message='', commit_description='',
                                                          oid='1' * 40))
    out = tmp_path / 'pushed'
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(out), '--epochs', '1', *TRAIN_ARGS,
                 '--push-to-hub', 'me/shapes']) == 0
    assert sorted(sent) == ['README.md', 'app.py', 'config.json', 'curves.png', 'metrics.json', 'model.safetensors',
                            'requirements.txt']
    assert "hf-hub:me/shapes" in (out / 'README.md').read_text()


def test_training_from_a_worker_thread(image_dataset, tmp_path):
    """A notebook or service may train off the main thread, where signal handlers cannot be installed."""
    import threading
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=main(
        ['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 't'), '--epochs', '1', *TRAIN_ARGS])))
    thread.start()
    thread.join(timeout=300)
    assert result.get('code') == 0


def test_finetune_from_a_folder_loads_its_weights_and_channels(image_dataset, tmp_path, caplog):
    """No --pretrained, no --in-chans: a folder model brings its weights and its 1 input channel."""

    from fishzoo.hub import save_pretrained
    source = tmp_path / 'gray'
    save_pretrained(timm.create_model('fishnet_s64', num_classes=3, in_chans=1), source)
    with caplog.at_level('INFO', logger='fishzoo.train'):
        assert main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'ft'), '--epochs', '1',
                     *TRAIN_ARGS, '--model', f'local-dir:{source}', '--finetune', 'frozen']) == 0
    assert f'loading the weights of local-dir:{source} (implied by --model local-dir:{source})' in caplog.text
    tuned, original = load_file(tmp_path / 'ft' / 'model.safetensors'), load_file(source / 'model.safetensors')
    assert tuned['stem.conv1.conv.weight'].shape[1] == 1
    frozen = [k for k in original if not k.startswith('fc.') and 'running' not in k and 'num_batches' not in k]
    assert all(torch.equal(tuned[k], original[k]) for k in frozen)  # the folder's backbone, untouched
    caplog.clear()
    with caplog.at_level('INFO', logger='fishzoo.train'):
        assert main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'rgb'), '--epochs', '1',
                     *TRAIN_ARGS, '--model', str(source), '--in-chans', '3']) == 0
    assert 'adapting the stem of' in caplog.text and 'from 1 to 3 input channels' in caplog.text


def test_initial_checkpoint(image_dataset, tmp_path, capsys):
    from safetensors.torch import save_file
    source = timm.create_model('fishnet_s64', num_classes=3)
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'w.pth')
    save_file(source.state_dict(), tmp_path / 'w.safetensors')
    args = train.parse_args(['--data-dir', str(image_dataset), *TRAIN_ARGS, '--initial-checkpoint',
                             str(tmp_path / 'w.pth')])
    for path in ('w.pth', 'w.safetensors'):
        args.initial_checkpoint = str(tmp_path / path)
        model = train.parts.create_model(args, 3)
        assert torch.equal(model.fc.weight, source.fc.weight)
    _fails_with(capsys, ['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), *TRAIN_ARGS,
                         '--initial-checkpoint', str(tmp_path / 'nope.pth')], '--initial-checkpoint')
    torch.save(timm.create_model('fishnet_s64', num_classes=5).state_dict(), tmp_path / 'five.pth')
    _fails_with(capsys, ['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), *TRAIN_ARGS,
                         '--initial-checkpoint', str(tmp_path / 'five.pth')], 'fc.weight [5, 264] vs [3, 264]')


def test_val_split_names_a_dataset_split(image_dataset):
    loaded = data.hf_data('imagefolder', image_dataset, 'validation')
    assert len(loaded.val) == 12
    with pytest.raises(data.DataError, match='--val-split nope: --dataset imagefolder has no such split'):
        data.hf_data('imagefolder', image_dataset, 'nope')


def test_faulthandler_is_on_in_the_entry_point():
    """A fatal error in native code (oneDNN, a data loader) must leave a Python stack behind."""
    code = ('import faulthandler, fishzoo.train; faulthandler.disable(); '
            "fishzoo.train.main(['--epochs', '0']); print(faulthandler.is_enabled())")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == 'True', proc.stderr


def test_card_of_a_class_folder_run(trained_run, image_dataset):
    """Published as it is: no local path, no local folder as a dataset, no top-5 for 3 classes, no license
    nobody chose, the classes and the limitations; --license and --dataset-name say what the user gives."""
    from huggingface_hub import ModelCard
    card = ModelCard.load(trained_run / 'README.md')
    assert str(image_dataset) not in card.text and str(trained_run) not in card.text
    assert card.data.datasets is None and card.data.license is None and 'none chosen' in card.text
    assert 'Top-5' not in card.text and '`cat`, `dog`, `fish`' in card.text
    assert 'Trained on 24 images (a small data set); measured on 12 validation images (the val/ folder' in card.text
    # the headline is the best epoch's, chosen on the split it is measured on: said, not hidden
    assert 'that epoch was chosen as the best on this same split, so the figures read a little high' in card.text
    cfg = json.loads((trained_run / 'config.json').read_text())['pretrained_cfg']
    assert 'license' not in cfg and 'description' in cfg and 'trained with fishzoo-train' in cfg['description']


def test_payload_via_model_local_dir_in_training(hub_folder, image_dataset, tmp_path, marker, capsys):
    _, folder = hub_folder
    (folder / 'model.safetensors').unlink()
    evil_checkpoint(folder / 'pytorch_model.bin', marker)
    assert train_main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), *TRAIN_ARGS,
                 '--model', f'local-dir:{folder}', '--pretrained']) == 2
    one_line(capsys, f'--model local-dir:{folder}')
