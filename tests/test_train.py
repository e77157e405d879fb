"""fishzoo.train: flags and recipes, a real run end to end, resume after kill -9, two processes, bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import fishzoo  # noqa: F401
from fishzoo import train
from fishzoo.train import DIGITS_RECIPE, STATE_FILE, ConfigError, build_parser, load_config, main, parse_args
from tests.conftest import TRAIN_ARGS

REPO = Path(__file__).resolve().parents[1]


def test_no_options_is_the_digits_recipe_of_configs():
    assert load_config(str(REPO / 'configs' / 'digits.yaml'), build_parser()) == DIGITS_RECIPE
    args = parse_args([])
    assert (args.model, args.img_size, args.in_chans, args.epochs, args.hflip) == ('fishnet_s64', 32, 1, 8, 0.0)


def test_command_line_beats_config_beats_defaults(tmp_path):
    cfg = tmp_path / 'r.yaml'
    cfg.write_text('lr: 0.5\nbatch-size: 7\nscale: [0.5, 1.0]\nmodel-ema: true\ndata_dir: somewhere\n')
    args = parse_args(['--config', str(cfg), '--lr', '0.25'])
    assert (args.lr, args.batch_size, args.scale, args.model_ema, args.data_dir) == (0.25, 7, [0.5, 1.0], True,
                                                                                     'somewhere')
    assert args.hflip == 0.5  # data given: timm's default, not the digits recipe


@pytest.mark.parametrize('text, message', [
    ('learning_rate: 0.1\n', "unknown key 'learning_rate'"),
    ('lr: fast\n', "lr: 'fast' is not a valid float"),
    ('report-to: wandb\n', 'report-to must be one of none, tensorboard, trackio'),
    ('- lr\n', 'expected a mapping'),
    ('lr: [1\n', 'not valid YAML'),
])
def test_bad_config(tmp_path, text, message):
    cfg = tmp_path / 'bad.yaml'
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse_args(['--config', str(cfg)])


def test_every_recipe_parses():
    for recipe in sorted((REPO / 'configs').glob('*.yaml')):
        args = parse_args(['--config', str(recipe)])
        assert args.epochs >= 1, recipe


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
    from fishzoo.hub import save_pretrained
    source = tmp_path / 'pretrained'
    save_pretrained(timm.create_model('fishnet_s64', num_classes=5), source)
    with caplog.at_level('INFO', logger='fishzoo.train'):
        assert main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'ft'), '--epochs', '1',
                     *TRAIN_ARGS, '--model', f'local-dir:{source}', '--pretrained']) == 0
    assert 'replaced the classifier: 5 -> 3 classes; re-initialised fc.weight, fc.bias' in caplog.text


def test_pretrained_head_for_other_labels_is_replaced(trained_run, image_dataset, tmp_path, caplog):
    """Same number of classes, other label names: the old head would silently map old classes to new ones."""
    import shutil
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


def _weights(folder):
    return load_file(folder / 'model.safetensors')


def test_killed_and_resumed_run_matches_uninterrupted(image_dataset, tmp_path):
    common = ['--data-dir', str(image_dataset), '--epochs', '3', *TRAIN_ARGS]
    straight = tmp_path / 'straight'
    assert main([*common, '--output-dir', str(straight)]) == 0

    killed = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, '-m', 'fishzoo.train', *common, '--output-dir', str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / 'checkpoints' / 'epoch_0001' / STATE_FILE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, 'training ended before its first checkpoint'
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / 'model.safetensors').exists()  # it really died mid-run

    assert main([*common, '--output-dir', str(killed), '--resume', 'auto']) == 0
    resumed, reference = _weights(killed), _weights(straight)
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    assert [r['epoch'] for r in json.loads((killed / 'metrics.json').read_text())] == [0, 1, 2, 3]


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
                '--batch-size 500 (x 1 processes) is larger than the training set (24 images)')
    _fails_with(capsys, ['--data-dir', str(image_dataset), *out, '--model', 'fishnet_nope'],
                '--model fishnet_nope: unknown model')
    _fails_with(capsys, ['--epochs', '0', *out], '--epochs must be at least 1, got 0')
    (tmp_path / 'labels.csv').write_text('image,labels\nnope.png,a\n')
    _fails_with(capsys, ['--train-csv', str(tmp_path / 'labels.csv'), '--val-split', '0.5', *out],
                'line 2: image')


def test_output_dir_with_another_run_is_refused(trained_run, capsys):
    _fails_with(capsys, ['--output-dir', str(trained_run)], 'holds another run')


def test_strict_images(image_dataset, tmp_path, capsys):
    import shutil
    data = tmp_path / 'ds'
    shutil.copytree(image_dataset, data)
    (data / 'train' / 'cat' / 'broken.png').write_bytes(b'\x89PNG not really')
    _fails_with(capsys, ['--data-dir', str(data), '--output-dir', str(tmp_path / 'o'), '--strict-images'],
                'broken.png: unreadable image')


def test_nan_loss_stops_with_the_step(image_dataset, tmp_path, capsys):
    _fails_with(capsys, ['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'nan'), '--epochs', '3',
                         *TRAIN_ARGS, '--opt', 'sgd', '--lr', '1e12'],
                'the loss became')
    _fails_with(capsys, ['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'm0'), *TRAIN_ARGS,
                         '--opt', 'sgd', '--momentum', '0'], '--opt sgd: Nesterov momentum requires')
    _fails_with(capsys, ['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), *TRAIN_ARGS,
                         '--opt', 'nope'], '--opt nope:')


def test_tensorboard_tracker(image_dataset, tmp_path):
    pytest.importorskip('tensorboard')
    out = tmp_path / 'tb'
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(out), '--epochs', '1', *TRAIN_ARGS,
                 '--report-to', 'tensorboard']) == 0
    assert list(out.rglob('events.out.tfevents.*'))


def test_entry_points():
    for cmd in ([sys.executable, '-m', 'fishzoo.train', '--help'], ['fishzoo-train', '--help'],
                [sys.executable, str(REPO / 'scripts' / 'train.py'), '--help']):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and '--grad-accum-steps' in proc.stdout, cmd


def test_resume_auto_takes_the_newest_complete_checkpoint(tmp_path):
    root = tmp_path / 'checkpoints'
    for name, complete in (('epoch_0001', True), ('epoch_0002', True), ('.epoch_0003.tmp', True),
                           ('epoch_0004', False)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / STATE_FILE).write_bytes(b'')
    # a save killed half way leaves a .tmp folder or one without fishzoo's state file: both are ignored
    assert train.find_resume_checkpoint(tmp_path, 'auto') == root / 'epoch_0002'
    assert train.find_resume_checkpoint(tmp_path / 'none', 'auto') is None
    with pytest.raises(ConfigError, match='not a complete fishzoo checkpoint folder'):
        train.find_resume_checkpoint(tmp_path, str(root / 'epoch_0004'))


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
    assert sorted(sent) == ['README.md', 'config.json', 'curves.png', 'metrics.json', 'model.safetensors']
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
