"""Hostile inputs and faults: nothing executes from a checkpoint, nothing finished is lost, every bad input
gets one clear sentence.

The matrix (rows tested in other files are named there):

Loading       pickle payload via file overlay, local-dir pytorch_model.bin, convert, --resume (each file),
              --model local-dir:, predict .................................... test_payload_*
              truncated / bit-flipped model.safetensors ........................ test_corrupted_safetensors
              another architecture, another number of classes ................. test_other_architecture,
                                                                                   test_other_number_of_classes
              config.json unknown architecture / malformed; folder without weights test_bad_hub_folders
              config.json model_args: factory keys, unknown keys, types, ranges, and shapes against the
              model.safetensors header (nothing allocated) ... test_config_model_args_are_checked_before_building,
                                       test_config_checks_cover_timm_architectures,
                                       test_huge_num_classes_allocates_nothing
Model inputs  channels, 2-D / 5-D, below the minimum size .................... test_bad_model_inputs
                                                                                   (+ test_fishnet.py)
Data          empty / missing folders, zero-byte and truncated images, EXIF, 16-bit, CSV missing images and
              unknown labels ......... test_data.py, train/test_cli.py::test_bad_inputs_get_one_line
              CSV duplicate rows .............................................. test_csv_duplicate_rows
              decompression bombs (900 Mpx in 100 KB; 100 Mpx) in predict, class folders, CSVs
                                 test_image_bombs_in_predict, test_image_bombs_in_training_data_are_skipped...
Training      NaN / inf loss ...... train/test_trainer.py::test_nan_loss_keeps_last_good_checkpoint
              SIGTERM / SIGINT ................................................ test_signal_saves_and_exits
              full disk while saving  train/test_trainer.py::test_full_disk_keeps_previous_checkpoint
              kill -9 several times, resumed each time ........................ test_repeated_kill_9
              a second run on the same --output-dir ........ test_second_run_on_the_same_output_dir_is_refused
Hub           no token, bad token, network down ... test_hub.py::test_push_without_token,
              test_push_failure_keeps_folder_and_hides_token, and test_push_with_the_hub_offline below
Fuzzing       config.json reader, CSV reader (hypothesis) ..................... test_fuzz_*

Round three (the red-team and new-user rows of issue #24):
1 class counts that disagree (top-level num_classes vs model_args / weights) .. test_class_counts_must_agree
2 a 1 x 20,000,000 px strip; crop_pct 1e-4, input_size 100000 in a config ...
                          test_memory_is_bounded_by_what_the_resize_computes, test_preprocessing_values_are_checked
3 a FIFO named evil.png in a class folder ..... test_class_folder_walks_skip_special_files_and_stay_in_the_root,
                                                test_training_on_a_folder_with_a_fifo_finishes
4 l1 -> .., l2 -> .., self -> ., links out of the root ......... (the same walk test)
5 export -o into a folder holding files ............. test_export_into_a_folder_holding_files_is_refused
6 kill -9 while re-publishing ............................. test_kill_9_while_republishing_leaves_a_loadable_folder
7 full disk while publishing; read-only --output-dir; label_names / mean / interpolation of the wrong type;
  an export whose outputs differ from its labels; onnxruntime failing at run time; 10^5 CSV labels ...
  test_a_full_disk_while_publishing_leaves_the_folder_as_it_was, test_a_read_only_output_dir_gets_one_sentence,
  test_preprocessing_values_are_checked, test_label_names_of_the_wrong_type,
  test_exported_models_that_disagree_or_fail_get_one_sentence,
  test_a_csv_with_a_label_per_row_is_refused_before_gigabytes_are_allocated
8 OpenVINO errors cut to "Exception from src/..." ........................ test_openvino_failures_say_why
9 calibration CSV with absolute or ../ paths (documented) ...... test_calibration_csv_paths_are_read_as_written
New user: WebP/BMP left out ............................................ test_every_image_format_pil_reads_is_found
          process-group SIGTERM under accelerate launch ... test_process_group_sigterm_under_accelerate_launch_saves
          predict FILE.onnx; info FOLDER; did you mean ... test_predict_with_the_single_onnx_file_export_wrote,
                                                          test_info_reads_folders_and_suggests_names
          empty folder after a failed run; hold-out said before the missing --data-dir
                                                   test_a_failed_run_says_one_thing_and_leaves_no_empty_folder
          --help defaults ......................................... test_help_says_the_recipe_sets_its_flags
          demo endpoint ........................... test_demo.py::test_the_page_api_is_called_predict
          export --val-data RUN_FOLDER ...................... deploy/test_int8_exported.py::
                                                          test_a_run_folder_calibrates_and_validates_on_its_own_split
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import fishzoo  # noqa: F401
from fishzoo import data
from fishzoo.cli import main as cli_main
from fishzoo.errors import CheckpointError
from fishzoo.hub import HubFolderError, HubUploadError, push_to_hub, read_hub_config, save_pretrained
from fishzoo.train import STATE_FILE, checkpoint_dirs, main
from tests.conftest import TRAIN_ARGS

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / 'PAYLOAD_RAN'
    yield path
    assert not path.exists(), 'a checkpoint executed code'


def _evil_checkpoint(path, marker, state=None):
    torch.save({'state_dict': state or {'x': torch.zeros(1)}, 'payload': Payload(marker)}, path)
    return path


@pytest.fixture
def hub_folder(tmp_path):
    model = timm.create_model('fishnet_s64', num_classes=3).eval()
    return model, save_pretrained(model, tmp_path / 'hub', label_names=['a', 'b', 'c'])


def _one_line(capsys, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    return err[0]


# --- loading -------------------------------------------------------------------------------------

def test_payload_via_file_overlay(tmp_path, marker):
    path = _evil_checkpoint(tmp_path / 'evil.tar', marker)
    with pytest.raises(CheckpointError, match=f'{path}: cannot be loaded .*weights_only'):
        timm.create_model('fishnet99', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_payload_via_local_dir_bin_and_predict(hub_folder, tmp_path, marker, capsys):
    _, folder = hub_folder
    (folder / 'model.safetensors').unlink()
    _evil_checkpoint(folder / 'pytorch_model.bin', marker)
    with pytest.raises(CheckpointError, match='pytorch_model.bin|cannot be loaded'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (64, 64)).save(image)
    assert cli_main(['predict', str(folder), str(image)]) == 2
    _one_line(capsys, str(folder))


def test_payload_via_convert_script(tmp_path, marker):
    path = _evil_checkpoint(tmp_path / 'evil.tar', marker)
    proc = subprocess.run([sys.executable, str(REPO / 'scripts' / 'convert_fishnet.py'), 'fishnet99', str(path),
                           '--output-dir', str(tmp_path / 'out')], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and 'weights_only' in lines[0]
    assert not (tmp_path / 'out' / 'model.safetensors').exists()


def test_payload_via_model_local_dir_in_training(hub_folder, image_dataset, tmp_path, marker, capsys):
    _, folder = hub_folder
    (folder / 'model.safetensors').unlink()
    _evil_checkpoint(folder / 'pytorch_model.bin', marker)
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), *TRAIN_ARGS,
                 '--model', f'local-dir:{folder}', '--pretrained']) == 2
    _one_line(capsys, f'--model local-dir:{folder}')


@pytest.fixture
def checkpointed_run(trained_run, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(trained_run, run)
    return run


@pytest.mark.parametrize('victim', ['optimizer.bin', 'random_states_0.pkl', STATE_FILE])
def test_payload_via_resume(checkpointed_run, image_dataset, marker, capsys, victim):
    newest = checkpoint_dirs(checkpointed_run)[-1]
    torch.save({'payload': Payload(marker)}, newest / victim)
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(checkpointed_run), *TRAIN_ARGS,
                 '--epochs', '4', '--resume', 'auto']) == 2
    line = _one_line(capsys, f'--resume {newest}: refused a file that is not plain tensors')
    assert 'Traceback' not in line


def _flip_bit(path: Path, offset: int):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize('damage', ['truncated', 'flipped data bit', 'flipped header bit'])
def test_corrupted_safetensors(hub_folder, image_dataset, tmp_path, capsys, damage):
    _, folder = hub_folder
    weights = folder / 'model.safetensors'
    size = weights.stat().st_size
    if damage == 'truncated':
        weights.write_bytes(weights.read_bytes()[:size // 2])
    else:
        _flip_bit(weights, size - 100 if damage == 'flipped data bit' else 20)
    with pytest.raises(CheckpointError, match=f'{weights}: corrupted'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), *TRAIN_ARGS,
                 '--model', f'local-dir:{folder}', '--pretrained']) == 2
    _one_line(capsys, f'{weights}: corrupted')


def test_corrupted_safetensors_without_recorded_hash(hub_folder):
    """Folders not written by fishzoo carry no hash: a truncated file still gets a sentence naming it."""
    _, folder = hub_folder
    config = json.loads((folder / 'config.json').read_text())
    del config['weights_sha256']
    (folder / 'config.json').write_text(json.dumps(config))
    weights = folder / 'model.safetensors'
    data = weights.read_bytes()
    for cut in (1000, len(data) // 2):  # in the header, in the tensors: refused before a model is built
        weights.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f'{weights}: not a readable safetensors file \\(SafetensorError'):
            timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_other_architecture(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save(timm.create_model('resnet18').state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        timm.create_model('fishnet_s64', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    message = str(err.value)
    assert message.startswith(f'{path}: the checkpoint does not fit fishnet_s64')
    assert 'missing keys (stem.conv1.conv.weight' in message and 'unexpected keys (conv1.weight' in message
    assert len(message) < 600 and '\n' not in message
    mobilenet = tmp_path / 'mobilenet.pth'
    torch.save(timm.create_model('mobilenetv2_dual_050').state_dict(), mobilenet)
    with pytest.raises(CheckpointError, match='does not fit fishnet_s64'):
        timm.create_model('fishnet_s64', pretrained=True, pretrained_cfg_overlay=dict(file=str(mobilenet)))
    with pytest.raises(CheckpointError, match='does not fit mobilenetv2_dual_100'):
        timm.create_model('mobilenetv2_dual_100', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_other_number_of_classes(tmp_path):
    path = tmp_path / 'five.pth'
    five = timm.create_model('fishnet_s64', num_classes=5)
    torch.save(five.state_dict(), path)
    overlay = dict(file=str(path))
    # not asked for: an error naming the head
    with pytest.raises(CheckpointError, match=r'shape mismatches .*fc.weight \[5, 264\] vs \[200, 264\].*num_classes'):
        timm.create_model('fishnet_s64', pretrained=True, pretrained_cfg_overlay=overlay)
    # asked for: the head is re-initialised, the rest loaded
    seven = timm.create_model('fishnet_s64', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=7)
    assert seven.fc.out_features == 7
    assert torch.equal(seven.stem.conv1.conv.weight, five.stem.conv1.conv.weight)


@pytest.mark.parametrize('content, message', [
    ('{"architecture": "fishnet_nope", "num_classes": 3}', "unknown architecture 'fishnet_nope'"),
    ('{"architecture": "fishnet_s64", ', 'not valid JSON'),
    ('[1, 2]', 'expected a JSON object'),
    ('{"num_classes": 3}', 'no "architecture" name'),
    ('{"architecture": "fishnet_s64", "num_classes": -1}', '"num_classes" must be a non-negative integer'),
])
def test_bad_hub_folders(hub_folder, image_dataset, tmp_path, capsys, content, message):
    _, folder = hub_folder
    (folder / 'config.json').write_text(content)
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (64, 64)).save(image)
    assert cli_main(['predict', str(folder), str(image)]) == 2
    _one_line(capsys, message)
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), *TRAIN_ARGS,
                 '--model', f'local-dir:{folder}', '--pretrained']) == 2
    _one_line(capsys, message)


def _edit_config(folder, **changes):
    config = json.loads((folder / 'config.json').read_text())
    for key, value in changes.items():
        if key == 'model_args':
            config['model_args'] = {**config.get('model_args', {}), **value}
        else:
            config[key] = value
    (folder / 'config.json').write_text(json.dumps(config))


@pytest.mark.parametrize('changes, message', [
    # timm itself would fail with "got multiple values for keyword argument" inside create_model
    (dict(model_args={'pretrained_cfg_overlay': {'file': '/etc/passwd'}}),
     '"model_args.pretrained_cfg_overlay" is not a model argument'),
    (dict(model_args={'num_classes': 10 ** 9}), '"model_args.num_classes" must be from 0 to 1e+06, got 1000000000'),
    (dict(model_args={'stage_chs': 'wide'}), '"model_args.stage_chs" must be a list of 1 to 19 integers'),
    (dict(model_args={'depths': [1, 1, 2, 1, 1, 1, 1, 1, 1, 10 ** 6]}), '"model_args.depths" has an item that'),
    (dict(model_args={'evil': 1}), '"model_args.evil" is not an argument of fishnet_s64'),
    (dict(model_args={'act_layer': 'os.system("x")'}), '"model_args.act_layer" must be a short layer name'),
    (dict(model_args={'act_layer': 'nope'}), '"model_args" do not build fishnet_s64'),
    # in range, but not what the weights hold: refused from the safetensors header, before any allocation
    (dict(model_args={'num_classes': 1_000_000}), 'fc.weight is [3, 264] in the weights but [1000000, 264]'),
    (dict(model_args={'in_chans': 4}), 'stem.conv1.conv.weight is [8, 3, 3, 3] in the weights but [8, 4, 3, 3]'),
    (dict(architecture='fishnet99'), 'does not describe the model in model.safetensors'),
])
def test_config_model_args_are_checked_before_building(hub_folder, tmp_path, capsys, changes, message):
    _, folder = hub_folder
    _edit_config(folder, **changes)
    with pytest.raises(fishzoo.errors.ModelLoadError, match=re.escape(message)):
        fishzoo.load_model(str(folder))
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (64, 64)).save(image)
    assert cli_main(['predict', str(folder), str(image)]) == 2
    line = _one_line(capsys, message)
    assert str(folder / 'config.json') in line
    if 'pretrained_cfg_overlay' not in json.dumps(changes):  # timm's factory rejects that one before fishzoo runs
        with pytest.raises(CheckpointError, match=re.escape(message)):
            timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_config_checks_cover_timm_architectures(tmp_path):
    folder = save_pretrained(timm.create_model('resnet18', num_classes=3), tmp_path / 'resnet')
    _edit_config(folder, model_args={'pretrained_cfg_overlay': {'file': '/etc/passwd'}})
    with pytest.raises(fishzoo.errors.ModelLoadError, match='"model_args.pretrained_cfg_overlay" is not a model'):
        fishzoo.load_model(str(folder))
    _edit_config(folder, model_args={'pretrained_cfg_overlay': None})
    config = json.loads((folder / 'config.json').read_text())
    del config['model_args']['pretrained_cfg_overlay']
    config['model_args']['num_classes'] = 1_000_000
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(fishzoo.errors.ModelLoadError, match=re.escape('fc.weight is [3, 512] in the weights')):
        fishzoo.load_model(str(folder))


def test_huge_num_classes_allocates_nothing(hub_folder):
    """A config asking for 10^6 classes (2 GB of head on fishnet_s64): refused with the process's peak
    memory where a plain import leaves it; built first, it would have allocated the head."""
    _, folder = hub_folder
    _edit_config(folder, model_args={'num_classes': 1_000_000})
    code = ('import resource, sys, fishzoo\n'
            'base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n'
            'try:\n'
            f'    fishzoo.load_model({str(folder)!r})\n'
            'except fishzoo.FishzooError as e:\n'
            '    print(str(e), file=sys.stderr)\n'
            'print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert 'does not describe the model' in proc.stderr, proc.stderr
    assert int(proc.stdout.strip()) < 300, f'{proc.stdout.strip()} MB allocated while refusing the folder'


def test_hub_folder_without_weights(hub_folder, capsys, tmp_path):
    _, folder = hub_folder
    (folder / 'model.safetensors').unlink()
    with pytest.raises(CheckpointError, match=f'{folder}: no weights'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (64, 64)).save(image)
    assert cli_main(['predict', str(folder), str(image)]) == 2
    _one_line(capsys, 'no weights (expected model.safetensors next to config.json)')


# --- model inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['fishnet_s64', 'fishnet99', 'mobilenetv2_dual_050'])
@pytest.mark.parametrize('shape, message', [
    ((1, 1, 64, 64), 'expected 3 input channels, got 1'),
    ((64, 64), 'expected a 4-D image batch'),
    ((1, 1, 3, 64, 64), 'expected a 4-D image batch'),
])
def test_bad_model_inputs(name, shape, message):
    model = timm.create_model(name, num_classes=2).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))
    too_small = model.min_input_size - 1
    with pytest.raises(ValueError, match=f'at least {model.min_input_size}x{model.min_input_size} px'):
        model(torch.randn(1, 3, too_small, 64))
    with pytest.raises(ValueError, match='expected 3 input channels'):
        model.forward_intermediates(torch.randn(1, 4, 64, 64))


# --- data and training ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def bombs(tmp_path_factory):
    """Past PIL's own limit (it raises), and between PIL's warning and its limit (it would decode 100 Mpx)."""
    from tests.helpers.images import write_png_bomb
    root = tmp_path_factory.mktemp('bombs')
    return [write_png_bomb(root / 'bomb.png'), write_png_bomb(root / 'big.png', 10000, 10000)]


def test_image_bombs_in_predict(hub_folder, bombs, capsys):
    _, folder = hub_folder
    for bomb in bombs:
        assert cli_main(['predict', str(folder), str(bomb)]) == 2
        _one_line(capsys, f'{bomb}: refused as a decompression bomb')


def test_image_bombs_in_training_data_are_skipped_and_counted(bombs, tmp_path, capsys, caplog):
    from tests.helpers.images import make_multilabel_csv, make_train_val
    root = make_train_val(tmp_path / 'ds')
    for bomb in bombs:
        shutil.copy(bomb, root / 'train' / 'cat' / bomb.name)
    with caplog.at_level('WARNING', logger='fishzoo'):
        assert main(['--data-dir', str(root), '--output-dir', str(tmp_path / 'o'), '--epochs', '1',
                     *TRAIN_ARGS]) == 0
    assert 'skipped 2 unreadable images in all' in caplog.text
    assert 'bomb.png: refused as a decompression bomb' in caplog.text
    assert main(['--data-dir', str(root), '--output-dir', str(tmp_path / 's'), '--strict-images', *TRAIN_ARGS]) == 2
    _one_line(capsys, 'refused as a decompression bomb')

    csv_path = make_multilabel_csv(tmp_path / 'csv', rows=12)
    for bomb in bombs:
        shutil.copy(bomb, csv_path.parent / 'images' / bomb.name)
    csv_path.write_text(csv_path.read_text() + 'images/bomb.png,red\nimages/big.png,blue\n')
    loaded = data.csv_data(csv_path, val_fraction=0.25)
    assert len(loaded.train) + len(loaded.val) == 12
    assert sorted(Path(p).name for p, _ in loaded.skipped) == ['big.png', 'bomb.png']
    assert all('decompression bomb' in reason for _, reason in loaded.skipped)


def test_csv_duplicate_rows(tmp_path, caplog):
    from tests.helpers.images import make_multilabel_csv
    csv_path = make_multilabel_csv(tmp_path, rows=8)
    lines = csv_path.read_text().splitlines()
    csv_path.write_text('\n'.join(lines + [lines[3], lines[4].split(',')[0] + ',red green blue']) + '\n')
    with caplog.at_level('WARNING', logger='fishzoo.data'):
        rows = data.read_label_csv(csv_path)
    assert len(rows) == 8
    assert 'listed again with other labels; keeping the first row' in caplog.text


def _start(args, out):
    return subprocess.Popen([sys.executable, '-m', 'fishzoo.train', *args, '--output-dir', str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize('signum, code', [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_signal_saves_and_exits(image_dataset, tmp_path, signum, code):
    args = ['--data-dir', str(image_dataset), '--epochs', '3', *TRAIN_ARGS]
    out = tmp_path / 'sig'
    proc = _start(args, out)
    deadline = time.monotonic() + 300
    while not (out / 'metrics.json').exists():  # epoch 0 evaluated: training has begun
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stderr
    assert f'stopped by {signal.Signals(signum).name}' in stderr and 'checkpoint saved' in stderr
    newest = checkpoint_dirs(out)[-1]
    assert (newest / STATE_FILE).exists()
    assert main([*args, '--output-dir', str(out), '--resume', 'auto']) == 0
    assert [r['epoch'] for r in json.loads((out / 'metrics.json').read_text())][-1] == 3


@pytest.mark.slow
def test_second_run_on_the_same_output_dir_is_refused(image_dataset, tmp_path, capsys):
    """Two trainings on one folder would write into each other's checkpoints: the second is refused, naming
    the first's process; once the first is killed with -9 its lock is gone and a resume runs."""
    args = ['--data-dir', str(image_dataset), '--epochs', '3', *TRAIN_ARGS]
    out = tmp_path / 'shared'
    proc = _start(args, out)
    try:
        deadline = time.monotonic() + 300
        lock = out / '.fishzoo-train.lock'
        while not (lock.exists() and lock.read_text().strip() == str(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for extra in ([], ['--resume', 'auto'], ['--overwrite']):
            assert main([*args, '--output-dir', str(out), *extra]) == 2
            _one_line(capsys, f'--output-dir {out} is in use by another fishzoo-train run (process {proc.pid}')
    finally:
        proc.kill()
        proc.wait()
    assert main([*args, '--output-dir', str(out), '--resume', 'auto']) == 0  # kill -9 released the lock
    assert not lock.exists()


@pytest.mark.slow
def test_repeated_kill_9(image_dataset, tmp_path):
    """kill -9 at random moments (during saves too), resumed with --resume auto each time: the final weights
    equal an uninterrupted run's."""
    # 12 short epochs (~0.6 s each after a ~3 s start): three kills 3.3-4.8 s into each attempt always land
    # before the run could finish, at random points of start-up, training, validation or saving
    args = ['--data-dir', str(image_dataset), '--epochs', '12', *TRAIN_ARGS]
    straight = tmp_path / 'straight'
    assert main([*args, '--output-dir', str(straight)]) == 0
    out = tmp_path / 'killed'
    rng = random.Random(1234)
    kills = 0
    for attempt in range(3):
        proc = _start(args + (['--resume', 'auto'] if attempt else []), out)
        time.sleep(rng.uniform(3.3, 4.8))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
    assert kills == 3 and not (out / 'model.safetensors').exists()
    assert main([*args, '--output-dir', str(out), '--resume', 'auto']) == 0
    resumed, reference = load_file(out / 'model.safetensors'), load_file(straight / 'model.safetensors')
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key


# --- hub -----------------------------------------------------------------------------------------

def test_push_with_the_hub_offline(hub_folder, monkeypatch):
    """The real network path with the network off (HF_HUB_OFFLINE): nothing replaced."""
    _, folder = hub_folder
    token = 'hf_RealLookingTokenValue123456'
    monkeypatch.setenv('HF_TOKEN', token)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(HubUploadError) as err:
        push_to_hub(folder, 'someone/fishnet')
    assert 'offline' in str(err.value).lower() and token not in str(err.value)
    assert f'retry with `fishzoo push {folder} someone/fishnet`' in str(err.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# --- fuzzing -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
config_like = st.fixed_dictionaries({}, optional={
    'architecture': st.sampled_from(['fishnet_s64', 'resnet18', 'nope', '']) | st.integers() | st.none(),
    'num_classes': st.integers(-3, 5) | st.text(max_size=3) | st.none() | st.booleans(),
    'pretrained_cfg': json_values, 'model_args': json_values, 'label_names': json_values})


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(config_like.map(json.dumps), json_values.map(json.dumps), st.text(max_size=200),
                          st.binary(max_size=200)))
def test_fuzz_hub_config_reader(tmp_path, document):
    folder = tmp_path / 'fuzz'
    folder.mkdir(exist_ok=True)
    path = folder / 'config.json'
    path.write_bytes(document if isinstance(document, bytes) else document.encode('utf-8', 'surrogatepass'))
    try:
        config = read_hub_config(folder)
    except HubFolderError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(config['architecture'], str)


csv_cells = st.text(alphabet=st.characters(blacklist_categories=('Cs',)), max_size=15)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(csv_cells, csv_cells), max_size=6),
       header=st.sampled_from(['image,labels', 'labels,image', 'file,tags', '', 'image']),
       raw=st.binary(max_size=60))
def test_fuzz_csv_reader(tmp_path, rows, header, raw):
    folder = tmp_path / 'csvfuzz'
    (folder / 'img').mkdir(parents=True, exist_ok=True)
    (folder / 'img' / 'a.png').write_bytes(b'')
    path = folder / 'labels.csv'
    import csv as csv_module
    import io
    buffer = io.StringIO()
    writer = csv_module.writer(buffer)
    if header:
        buffer.write(header + '\n')
    for image, labels in rows:
        writer.writerow([image, labels])
    path.write_bytes(buffer.getvalue().encode('utf-8', 'surrogatepass') + raw)
    try:
        parsed = data.read_label_csv(path)
    except data.DataError as e:
        assert str(path) in str(e)
    else:
        assert all(Path(image).is_file() for image, _ in parsed)


# --- round three: no silent wrong model, memory bounded by what is computed, odd files ------------

def _pretrained_cfg(folder, **changes):
    config = json.loads((folder / 'config.json').read_text())
    config['pretrained_cfg'].update(changes)
    (folder / 'config.json').write_text(json.dumps(config))


@pytest.mark.parametrize('changes, message', [
    # a folder as fishzoo wrote it before (model_args.num_classes 3, as the weights): the red team's case
    (dict(model_args={'num_classes': 3}, num_classes=1_000_000),
     'class counts disagree (num_classes 1000000, model_args.num_classes 3, pretrained_cfg.num_classes 3, '
     'label_names 3)'),
    (dict(model_args={'num_classes': 3}, num_classes=11), 'class counts disagree (num_classes 11,'),
    (dict(label_names=['a', 'b']), 'class counts disagree (num_classes 3, pretrained_cfg.num_classes 3, '
                                   'label_names 2)'),
    # a folder as fishzoo writes it now: the top-level count builds the model, so the weights disagree
    (dict(num_classes=11), 'fc.weight is [3, 264] in the weights but [11, 264] by the config'),
])
def test_class_counts_must_agree(hub_folder, tmp_path, capsys, changes, message):
    """A top-level num_classes other than the weights' loaded without a word with a random classifier."""
    _, folder = hub_folder
    _edit_config(folder, **changes)
    with pytest.raises(fishzoo.FishzooError, match=re.escape(message)):
        fishzoo.load_model(str(folder))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (64, 64)).save(image)
    assert cli_main(['predict', str(folder), str(image)]) == 2
    assert str(folder / 'config.json') in _one_line(capsys, message)


@pytest.mark.parametrize('changes, message', [
    (dict(crop_pct=1e-4), '"pretrained_cfg.crop_pct" must be a number from 0.1 to 2, got 0.0001'),
    (dict(input_size=[1, 100000, 100000]), '"pretrained_cfg.input_size" must be [channels 1-4, height, width]'),
    (dict(input_size=[3, 64]), '"pretrained_cfg.input_size" must be'),
    (dict(mean='0.5'), '"pretrained_cfg.mean" must be 3 numbers'),
    (dict(mean=[0.5, 0.5]), '"pretrained_cfg.mean" must be 3 numbers'),
    (dict(std=[0.2, 0.0, 0.2]), '"pretrained_cfg.std" must be 3 positive numbers'),
    (dict(interpolation=3), '"pretrained_cfg.interpolation" must be one of'),
    (dict(crop_mode='sideways'), '"pretrained_cfg.crop_mode" must be one of'),
])
def test_preprocessing_values_are_checked(hub_folder, tmp_path, capsys, changes, message):
    """Wrong types and lengths failed deep in the transforms (TypeError, IndexError); sizes and crop fractions
    that make one image gigabytes are refused before any image is read."""
    _, folder = hub_folder
    _pretrained_cfg(folder, **changes)
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (64, 64)).save(image)
    assert cli_main(['predict', str(folder), str(image)]) == 2
    _one_line(capsys, message)
    with pytest.raises(HubFolderError, match=re.escape(message)):
        read_hub_config(folder)


def test_label_names_of_the_wrong_type(hub_folder, capsys, tmp_path):
    _, folder = hub_folder
    _edit_config(folder, label_names={'a': 0})
    with pytest.raises(fishzoo.FishzooError, match='"label_names" must be a list of names, got dict'):
        fishzoo.load_model(str(folder))


def _strip_image(path):
    """1 x 20,000,000 px, 19.5 KB: under the 89.5 Mpx bomb limit, but 1.28 Gpx once resized to 64 px high."""
    from PIL import Image
    Image.new('L', (20_000_000, 1), 128).save(path)
    return path


def test_memory_is_bounded_by_what_the_resize_computes(tmp_path):
    """predict, export calibration and the demo page read a strip image with bounded memory (they tried to
    allocate ~20 GB: MemoryError)."""
    from PIL import Image

    from fishzoo.images import MAX_IMAGE_PIXELS, LimitResize
    wide = Image.new('RGB', (40_000, 10))
    cropped = LimitResize(256)(wide)
    assert cropped.size[1] == 10 and 256 ** 2 * cropped.size[0] / 10 <= MAX_IMAGE_PIXELS < 256 ** 2 * 4000
    photo = Image.new('RGB', (4000, 3000))
    assert LimitResize(256)(photo) is photo  # ordinary shapes untouched

    strip = _strip_image(tmp_path / 'strip.png')
    folder = save_pretrained(timm.create_model('fishnet_s64', num_classes=3, in_chans=1), tmp_path / 'gray',
                             label_names=['a', 'b', 'c'])
    code = f'''
import sys
from fishzoo.cli import main
from fishzoo.deploy.calibration import calibration_images
from fishzoo.space_app import FolderClassifier
from PIL import Image
assert main(['predict', {str(folder)!r}, {str(strip)!r}]) == 0
import fishzoo
model = fishzoo.load_model({str(folder)!r})
images = calibration_images({str(tmp_path)!r}, model.pretrained_cfg)
assert images.dataset[0][0].shape == (1, 64, 64)
Image.MAX_IMAGE_PIXELS = None  # the demo receives images Gradio decoded already
assert FolderClassifier({str(folder)!r})(Image.open({str(strip)!r}))
# this process's own high-water mark (ru_maxrss would carry pytest's over the fork and exec)
peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')).split()[1]
print('peak MB', int(peak) // 1024)
'''
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) < 3000, proc.stdout  # MB, interpreter and torch included


def _class_tree(root, formats=('png',), per_class=2, classes=('cat', 'dog')):
    from PIL import Image
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt = formats[i % len(formats)]
            Image.new('RGB', (40, 40), (60 * c, 30 * i, 90)).save(root / name / f'{i}.{fmt}')
    return root


_WALK = '''
import sys, json
from pathlib import Path
from fishzoo.data import folder_samples
samples, classes = folder_samples(Path(sys.argv[1]), '--data-dir')
print(json.dumps([len(samples), sorted(classes)]))
'''


def _walk_in_a_subprocess(root):
    """The walk in a fresh process with a time limit: on the old code these trees hang or explode."""
    proc = subprocess.run([sys.executable, '-c', _WALK, str(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    return json.loads(proc.stdout)


def test_class_folder_walks_skip_special_files_and_stay_in_the_root(tmp_path):
    root = _class_tree(tmp_path / 'data', per_class=4)
    os.mkfifo(root / 'cat' / 'evil.png')  # opening it would block forever
    os.symlink('..', root / 'cat' / 'l1')  # two links to .. made the walk exponential
    os.symlink('..', root / 'cat' / 'l2')
    os.symlink('.', root / 'dog' / 'self')  # loaded the folder again as a phantom class 'self'
    outside = _class_tree(tmp_path / 'elsewhere', classes=('secret',))
    os.symlink(outside / 'secret', root / 'secret')  # a class from outside the data root
    os.symlink(outside / 'secret' / '0.png', root / 'dog' / 'stolen.png')
    assert _walk_in_a_subprocess(root) == [8, ['cat', 'dog']]


@pytest.mark.slow
def test_training_on_a_folder_with_a_fifo_finishes(tmp_path):
    root = _class_tree(tmp_path / 'data', per_class=6)
    os.mkfifo(root / 'dog' / 'evil.png')
    proc = subprocess.run(['fishzoo-train', '--data-dir', str(root), '--output-dir', str(tmp_path / 'run'),
                           '--epochs', '1', *TRAIN_ARGS], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_image_format_pil_reads_is_found(tmp_path, capsys):
    """WebP and BMP files were silently left out of class folders and predict folders."""
    root = _class_tree(tmp_path / 'mixed', formats=('jpg', 'png', 'webp', 'bmp'), per_class=8)
    assert _walk_in_a_subprocess(root) == [16, ['cat', 'dog']]
    folder = save_pretrained(timm.create_model('fishnet_s64', num_classes=2), tmp_path / 'm', label_names=['a', 'b'])
    assert cli_main(['predict', str(folder), str(root), '--json']) == 0
    assert len(json.loads(capsys.readouterr().out)) == 16


def test_openvino_failures_say_why(tmp_path, capsys):
    """OpenVINO's messages start with the C++ file that threw; the sentence was cut to that line."""
    folder = tmp_path / 'ov'
    folder.mkdir()
    shutil.copyfile(save_pretrained(timm.create_model('fishnet_s64', num_classes=2), tmp_path / 'm') / 'config.json',
                    folder / 'config.json')
    (folder / 'openvino_model.xml').write_text('<net>not a model')
    (folder / 'openvino_model.bin').write_bytes(b'')
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (40, 40)).save(image)
    assert cli_main(['predict', str(folder), str(image), '--backend', 'openvino']) == 2
    line = _one_line(capsys, 'OpenVINO could not load it (Unable to read the model')
    assert 'Exception from src' not in line


def test_export_into_a_folder_holding_files_is_refused(hub_folder, tmp_path, capsys):
    """README.md and config.json of the folder were silently overwritten, model files unlinked."""
    _, folder = hub_folder
    other = save_pretrained(timm.create_model('fishnet_s64', num_classes=2), tmp_path / 'other')
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    assert cli_main(['export', str(folder), '--format', 'onnx', '-o', str(other)]) == 2
    line = _one_line(capsys, f'-o {other}: holds README.md, app.py, config.json, model.safetensors')
    assert '--overwrite' in line
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before  # untouched
    assert cli_main(['export', str(folder), '--format', 'onnx', '-o', str(folder), '--overwrite']) == 2
    _one_line(capsys, 'is the folder of the model being exported')
    assert cli_main(['export', str(folder), '--format', 'onnx', '-o', str(other), '--overwrite']) == 0
    assert (other / 'model.onnx').is_file()


def test_a_failed_run_says_one_thing_and_leaves_no_empty_folder(tmp_path, capsys):
    """A missing --data-dir said "holding out 20%" first; the failed run left an empty output folder."""
    out = tmp_path / 'never'
    assert main(['--data-dir', str(tmp_path / 'nope'), '--output-dir', str(out), *TRAIN_ARGS]) == 2
    _one_line(capsys, f'--data-dir {tmp_path / "nope"}: no such directory')
    assert not out.exists()
    blocker = tmp_path / 'a-file'
    blocker.write_text('x')
    assert main(['--output-dir', str(blocker / 'run'), '--epochs', '1', *TRAIN_ARGS]) == 2
    _one_line(capsys, f'--output-dir {blocker / "run"}: cannot create it (')


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
    assert main(['--output-dir', str(tmp_path / 'ro'), '--epochs', '1', *TRAIN_ARGS]) == 2
    _one_line(capsys, f'--output-dir {tmp_path / "ro"}: cannot write there (Read-only file system)')


def _folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_a_full_disk_while_publishing_leaves_the_folder_as_it_was(hub_folder, monkeypatch, tmp_path, capsys):
    """safetensors' SafetensorError / OSError came out as a traceback, the folder half replaced."""
    import errno

    import fishzoo.hub
    _, folder = hub_folder
    before = _folder_bytes(folder)

    def full_disk(model, save_dir, **kwargs):
        (Path(save_dir) / 'model.safetensors').write_bytes(b'\0' * 1000)  # a part written, then no space
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(fishzoo.hub, 'save_for_hf', full_disk)
    with pytest.raises(fishzoo.FishzooError, match=re.escape(
            f'{folder}: could not write it (No space left on device); it is as it was before')):
        save_pretrained(timm.create_model('fishnet_s64', num_classes=3), folder, label_names=['a', 'b', 'c'])
    assert _folder_bytes(folder) == before and not list(tmp_path.glob('.publishing-*'))
    fishzoo.load_model(str(folder))

    # the same in a training run: one line, the checkpoints kept, and --resume auto publishes afterwards
    out = tmp_path / 'run'
    data_dir = _class_tree(tmp_path / 'data', per_class=6)
    args = ['--data-dir', str(data_dir), '--output-dir', str(out), '--epochs', '1', *TRAIN_ARGS]
    assert main(args) == 2
    _one_line(capsys, f'{out}: could not write it (No space left on device); it is as it was before')
    assert checkpoint_dirs(out) and not (out / 'model.safetensors').exists()
    monkeypatch.undo()
    assert main(args + ['--resume', 'auto']) == 0
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
    import fishzoo.hub_folder
    _, folder = hub_folder
    rng = random.Random(0)
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, '-c', _REPUBLISH, str(folder)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == 'ready'
        time.sleep(rng.uniform(0.05, 0.6))
        proc.kill()
        proc.wait()
        fishzoo.hub_folder._checked.clear()
        fishzoo.load_model(str(folder))  # the old folder or the new one, never neither
        config = json.loads((folder / 'config.json').read_text())
        assert config['weights_sha256'] == fishzoo.hub_folder.sha256_file(folder / 'model.safetensors')


@pytest.mark.slow
def test_process_group_sigterm_under_accelerate_launch_saves(image_dataset, tmp_path):
    """kill -TERM to the process group of `accelerate launch`: the launcher forwards its own SIGTERM at once,
    which the run took for a second signal and stopped without the checkpoint it had just promised."""
    out = tmp_path / 'launched'
    args = ['--data-dir', str(image_dataset), '--epochs', '30', *TRAIN_ARGS, '--img-size', '64', '--output-dir',
            str(out)]
    proc = subprocess.Popen([shutil.which('accelerate'), 'launch', '--cpu', '--num_processes', '1',
                             '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
                             '-m', 'fishzoo.train', *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / 'metrics.json').exists():  # epoch 0 evaluated: training has begun
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    # the launcher relays the worker's stderr and sometimes drops a chunk read as the signal arrives, so the
    # checkpoint is what is checked here (the log line is checked in test_a_launcher_repeating_the_signal...)
    newest = checkpoint_dirs(out)[-1]
    assert (newest / STATE_FILE).exists(), stderr[-3000:]
    assert '_batch_' in newest.name, newest  # saved mid-epoch, by the signal


def test_a_launcher_repeating_the_signal_is_the_same_request(monkeypatch, caplog):
    from fishzoo.train import signals
    monkeypatch.setenv('ACCELERATE_MIXED_PRECISION', 'no')  # what accelerate launch sets
    stops = signals.StopSignals()
    with caplog.at_level('WARNING', logger='fishzoo.train'):
        stops._on_signal(signal.SIGTERM, None)
        stops._on_signal(signal.SIGTERM, None)  # the launcher's, milliseconds later: ignored
    assert stops.signum == signal.SIGTERM and len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith('SIGTERM received: saving a checkpoint at the end of this '
                                                     'batch (the launcher ends this process 5 s after the signal')
    stops._first_at -= signals.REPEAT_WINDOW_S
    with pytest.raises(KeyboardInterrupt):  # pressed again later: stop at once
        stops._on_signal(signal.SIGINT, None)


def test_a_csv_with_a_label_per_row_is_refused_before_gigabytes_are_allocated(tmp_path):
    """10^5 distinct labels made a 40 GB multi-hot table (numpy's _ArrayMemoryError)."""
    images = tmp_path / 'images'
    images.mkdir()
    rows = ['image,labels']
    for i in range(20_000):
        (images / f'{i}.png').touch()
        rows.append(f'images/{i}.png,caption-{i}')
    (tmp_path / 'labels.csv').write_text('\n'.join(rows) + '\n')
    with pytest.raises(fishzoo.FishzooError, match=r'labels.csv: 20,000 distinct labels in 20,000 rows would take '
                                                    r'1.6 GB of targets; the labels column holds label names'):
        data.csv_data(tmp_path / 'labels.csv', val_fraction=0.2)


def _exported_onnx_folder(tmp_path):
    model = timm.create_model('fishnet_s64', num_classes=3).eval()
    folder = save_pretrained(model, tmp_path / 'model', label_names=['a', 'b', 'c'])
    assert cli_main(['export', str(folder), '--format', 'onnx', '-o', str(tmp_path / 'onnx')]) == 0
    from PIL import Image
    Image.new('RGB', (70, 60), (10, 120, 200)).save(tmp_path / 'x.png')
    return tmp_path / 'onnx', tmp_path / 'x.png'


def test_exported_models_that_disagree_or_fail_get_one_sentence(tmp_path, capsys, monkeypatch):
    """An export whose outputs do not match its labels gave an IndexError; onnxruntime failing at run time
    gave its traceback."""
    folder, image = _exported_onnx_folder(tmp_path)
    capsys.readouterr()
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps({**config, 'label_names': ['a', 'b', 'c', 'd'], 'num_classes': 4,
                                                    'pretrained_cfg': {**config['pretrained_cfg'], 'num_classes': 4}}))
    assert cli_main(['predict', str(folder), str(image)]) == 2
    _one_line(capsys, f'{folder}: the model gives [3] scores per image but 4 labels are named')
    (folder / 'config.json').write_text(json.dumps(config))

    import onnxruntime

    def fails(self, *args, **kwargs):
        raise onnxruntime.capi.onnxruntime_pybind11_state.RuntimeException('simulated kernel failure')
    monkeypatch.setattr(onnxruntime.InferenceSession, 'run', fails)
    assert cli_main(['predict', str(folder), str(image)]) == 2
    _one_line(capsys, f'{folder / "model.onnx"}: onnxruntime failed on a batch of shape [1, 3, 64, 64] '
                      '(RuntimeException: simulated kernel failure)')


def test_predict_with_the_single_onnx_file_export_wrote(tmp_path, capsys):
    """`fishzoo export -o FILE.onnx` then `fishzoo predict FILE.onnx IMG` said "no such folder"."""
    model = timm.create_model('fishnet_s64', num_classes=3).eval()
    folder = save_pretrained(model, tmp_path / 'model', label_names=['cat', 'dog', 'fish'])
    assert cli_main(['export', str(folder), '-o', str(tmp_path / 'm.onnx')]) == 0
    from PIL import Image
    Image.new('RGB', (70, 60), (10, 120, 200)).save(tmp_path / 'x.png')
    capsys.readouterr()
    assert cli_main(['predict', str(folder), str(tmp_path / 'x.png'), '--json', '--precision', 'fp32']) == 0
    expected = json.loads(capsys.readouterr().out)
    assert cli_main(['predict', str(tmp_path / 'm.onnx'), str(tmp_path / 'x.png'), '--json']) == 0
    got = json.loads(capsys.readouterr().out)
    assert got[0]['labels'] == expected[0]['labels']
    assert got[0]['scores'] == pytest.approx(expected[0]['scores'], abs=1e-4)


def test_info_reads_folders_and_suggests_names(hub_folder, capsys):
    """`fishzoo info FOLDER` said "unknown model" while predict, export and demo take folders; a misspelt
    name got no suggestion."""
    _, folder = hub_folder
    assert cli_main(['info', str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'{folder} (fishnet_s64)') and 'labels:       a, b, c' in out and '(3 classes)' in out
    assert cli_main(['info', 'fishnet_99']) == 2
    _one_line(capsys, "unknown model 'fishnet_99'; did you mean fishnet99")
    assert main(['--model', 'fishnet_99', '--output-dir', str(folder.parent / 'x'), '--epochs', '1']) == 2
    _one_line(capsys, '--model fishnet_99: unknown model; did you mean fishnet99')


def test_help_says_the_recipe_sets_its_flags(capsys):
    """--help listed SGD, 0.05 as the defaults where the recipe trains with AdamW at 3e-3."""
    with pytest.raises(SystemExit):
        main(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert "--opt OPT timm optimizer name ('sgd', 'adamw', 'lamb', ...) (default: the recipe's choice for your " \
           'data, named in the log; sgd where no recipe sets it)' in text


def test_calibration_csv_paths_are_read_as_written(tmp_path):
    """Documented (docs/safety.md): a CSV's image paths are relative to --image-root or the CSV's folder;
    absolute paths and '..' are read as written, since the CSV is the user's own file."""
    from PIL import Image

    from fishzoo.deploy.calibration import calibration_images
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    Image.new('RGB', (40, 40)).save(outside / 'a.png')
    (tmp_path / 'csvdir').mkdir()
    (tmp_path / 'csvdir' / 'c.csv').write_text(f'image,labels\n{outside / "a.png"},x\n../elsewhere/a.png,x\n')
    cfg = dict(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation='bilinear', crop_pct=1.0)
    assert len(calibration_images(tmp_path / 'csvdir' / 'c.csv', cfg)) == 2


def test_publishing_through_a_link_or_into_the_working_directory(tmp_path, monkeypatch):
    """The exchange swaps the folder a link points to (not the link), and never the working directory (the
    process would be left in a deleted one): there the files move one by one."""
    from fishzoo.atomic import staged_folder
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
