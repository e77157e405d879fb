"""fishzoo.hub.folder: a hub folder checked before anything is built from it."""
import json
import re
import subprocess
import sys

import pytest
import timm

import fishzoo
from fishzoo.cli import main as cli_main
from fishzoo.errors import CheckpointError
from fishzoo.hub import save_pretrained
from fishzoo.train import main as train_main
from tests.conftest import TRAIN_ARGS
from tests.helpers.hostile import (
    edit_config,
    evil_checkpoint,
    flip_bit,
    one_line,
)


def test_payload_via_local_dir_bin_and_predict(hub_folder, tmp_path, marker, capsys):
    _, folder = hub_folder
    (folder / 'model.safetensors').unlink()
    evil_checkpoint(folder / 'pytorch_model.bin', marker)
    with pytest.raises(CheckpointError, match='pytorch_model.bin|cannot be loaded'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (64, 64)).save(image)
    assert cli_main(['predict', str(folder), str(image)]) == 2
    one_line(capsys, str(folder))


@pytest.mark.parametrize('damage', ['truncated', 'flipped data bit', 'flipped header bit'])
def test_corrupted_safetensors(hub_folder, image_dataset, tmp_path, capsys, damage):
    _, folder = hub_folder
    weights = folder / 'model.safetensors'
    size = weights.stat().st_size
    if damage == 'truncated':
        weights.write_bytes(weights.read_bytes()[:size // 2])
    else:
        flip_bit(weights, size - 100 if damage == 'flipped data bit' else 20)
    with pytest.raises(CheckpointError, match=f'{weights}: corrupted'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert train_main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), *TRAIN_ARGS,
                 '--model', f'local-dir:{folder}', '--pretrained']) == 2
    one_line(capsys, f'{weights}: corrupted')


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
    one_line(capsys, message)
    assert train_main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), *TRAIN_ARGS,
                 '--model', f'local-dir:{folder}', '--pretrained']) == 2
    one_line(capsys, message)


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
    edit_config(folder, **changes)
    with pytest.raises(fishzoo.errors.ModelLoadError, match=re.escape(message)):
        fishzoo.load_model(str(folder))
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (64, 64)).save(image)
    assert cli_main(['predict', str(folder), str(image)]) == 2
    line = one_line(capsys, message)
    assert str(folder / 'config.json') in line
    if 'pretrained_cfg_overlay' not in json.dumps(changes):  # timm's factory rejects that one before fishzoo runs
        with pytest.raises(CheckpointError, match=re.escape(message)):
            timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_config_checks_cover_timm_architectures(tmp_path):
    folder = save_pretrained(timm.create_model('resnet18', num_classes=3), tmp_path / 'resnet')
    edit_config(folder, model_args={'pretrained_cfg_overlay': {'file': '/etc/passwd'}})
    with pytest.raises(fishzoo.errors.ModelLoadError, match='"model_args.pretrained_cfg_overlay" is not a model'):
        fishzoo.load_model(str(folder))
    edit_config(folder, model_args={'pretrained_cfg_overlay': None})
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
    edit_config(folder, model_args={'num_classes': 1_000_000})
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
    one_line(capsys, 'no weights (expected model.safetensors next to config.json)')


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
    edit_config(folder, **changes)
    with pytest.raises(fishzoo.FishzooError, match=re.escape(message)):
        fishzoo.load_model(str(folder))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (64, 64)).save(image)
    assert cli_main(['predict', str(folder), str(image)]) == 2
    assert str(folder / 'config.json') in one_line(capsys, message)


def test_label_names_of_the_wrong_type(hub_folder, capsys, tmp_path):
    _, folder = hub_folder
    edit_config(folder, label_names={'a': 0})
    with pytest.raises(fishzoo.FishzooError, match='"label_names" must be a list of names, got dict'):
        fishzoo.load_model(str(folder))
