"""The authors' and pytorchcv's FishNet weights: conversion, exact parity, pretrained tags, offline failure.

Parity uses the stand-in recipe of the shared reference README: deterministic weights generated from
the manifest of the authors' state dicts, and a golden output of the authors' own code.
"""
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import fishzoo  # noqa: F401
from fishzoo.errors import CheckpointError, PretrainedWeightsUnavailable
from fishzoo.models.fishnet import checkpoint_filter_fn

DATA = Path(__file__).resolve().parents[1] / 'data'
MANIFEST = json.loads((DATA / 'fishnet_original_manifest.json').read_text())
GOLDEN = json.loads((DATA / 'fishnet99_golden.json').read_text())
AUTHORS_ARCHS = ['fishnet99', 'fishnet150', 'fishnet201']


def stand_in_state_dict(arch, weight_seed=0):
    """The reference README's recipe, in the manifest's order."""
    g = torch.Generator().manual_seed(weight_seed)
    state = {}
    for key, shape in MANIFEST[arch]:
        if key.endswith('num_batches_tracked'):
            value = torch.tensor(0, dtype=torch.long)
        elif key.endswith('running_var'):
            value = torch.rand(shape, generator=g) * 0.5 + 0.5
        elif key.endswith('running_mean'):
            value = torch.randn(shape, generator=g) * 0.1
        elif key.endswith('weight') and len(shape) == 4:
            value = torch.randn(shape, generator=g) * math.sqrt(1 / (shape[1] * shape[2] * shape[3]))
        elif key.endswith('weight'):
            value = torch.rand(shape, generator=g) * 0.5 + 0.75
        elif key.endswith('bias'):
            value = torch.randn(shape, generator=g) * 0.1
        else:
            raise AssertionError(f'recipe has no rule for {key}')
        state[key] = value
    return state


def authors_checkpoint(arch, path, wrapped=True, prefix='module.'):
    """A file in the authors' format: a torch.save'd dict with epoch, arch, state_dict, best_prec1, optimizer."""
    state = {prefix + k: v for k, v in stand_in_state_dict(arch).items()}
    obj = dict(epoch=100, arch=arch, state_dict=state, best_prec1=torch.tensor(77.41),
               optimizer={'state': {}, 'param_groups': [{'lr': 0.1, 'momentum': 0.9, 'params': [0, 1]}]})
    torch.save(obj if wrapped else state, path)
    return path


def rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize('wrapped, prefix', [(True, 'module.'), (True, ''), (False, 'module.'), (False, '')])
def test_golden_parity_through_create_model(tmp_path, wrapped, prefix):
    case = next(c for c in GOLDEN if c['arch'] == 'fishnet99')
    assert case['weight_seed'] == 0
    path = authors_checkpoint('fishnet99', tmp_path / 'fishnet99_ckpt.tar', wrapped, prefix)
    model = timm.create_model('fishnet99', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(*case['input_shape'], generator=torch.Generator().manual_seed(case['input_seed']))
    with torch.no_grad():
        logits = model(x)
    assert rel_err(logits, torch.tensor(case['logits'])) <= 1e-4


@pytest.mark.parametrize('arch', AUTHORS_ARCHS)
def test_every_original_key_is_consumed_with_matching_shape(arch):
    with torch.device('meta'):
        model = timm.create_model(arch)
    original = stand_in_state_dict(arch)
    converted = checkpoint_filter_fn({'state_dict': original}, model)
    assert len(converted) == len(original) == len(MANIFEST[arch])
    expected = model.state_dict()
    assert set(converted) == set(expected)
    for key, value in converted.items():
        assert tuple(value.shape) == tuple(expected[key].shape), key


def test_unknown_original_key_is_reported():
    state = stand_in_state_dict('fishnet99')
    state['fish.fish.3.7.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="fish.fish.3.7.weight"):
        checkpoint_filter_fn(state, None)


def _pytorchcv_model(arch):
    """pytorchcv's independent FishNet (201 built from its FishNet class), with non-trivial BN statistics."""
    from pytorchcv.models.fishnet import FishNet, fishnet99, fishnet150
    if arch == 'fishnet201':
        layers = dict(direct=[[3, 4, 12], [2, 2, 2], [2, 3, 10]], skip=[[2, 2, 2, 4], [9, 2, 2, 0]])
        direct_chs = [[128, 256, 512], [512, 384, 256], [320, 832, 1600]]
        skip_chs = [[64, 128, 256, 512], [512, 768, 512, 0]]
        model = FishNet(
            direct_channels=[[[c] * n for c, n in zip(cs, ns)] for cs, ns in zip(direct_chs, layers['direct'])],
            skip_channels=[[[c] * n for c, n in zip(cs, ns)] for cs, ns in zip(skip_chs, layers['skip'])],
            init_block_channels=64)
    else:
        model = {'fishnet99': fishnet99, 'fishnet150': fishnet150}[arch]()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith('running_var'):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
            elif name.endswith('running_mean'):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5 if name.endswith('weight')
                        else torch.randn(p.shape, generator=g) * 0.1)
    # pytorchcv pools with a fixed 7x7 window; make it global so other input sizes can be compared
    model.features.final_pool = torch.nn.AdaptiveAvgPool2d(1)
    return model.eval()


@pytest.mark.parametrize('arch', AUTHORS_ARCHS)
def test_parity_with_pytorchcv_at_several_sizes(arch):
    reference = _pytorchcv_model(arch)
    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(state_dict=reference.state_dict()))
    model.eval()
    sizes = [(224, 224), (160, 288)] if arch != 'fishnet201' else [(192, 256)]
    for size in sizes:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert rel_err(model(x), reference(x)) <= 1e-4, size


def test_pretrained_tags_carry_address_accuracy_and_license():
    assert timm.list_pretrained('fishnet*') == [
        'fishnet99.in1k', 'fishnet150.in1k', 'fishnet150.in1k_ls', 'fishnet201.in1k_ls']
    expected_top1 = {'fishnet99.in1k': '77.41', 'fishnet150.in1k': '78.14',
                     'fishnet150.in1k_ls': '79.35', 'fishnet201.in1k_ls': '79.71'}
    for tag, top1 in expected_top1.items():
        cfg = timm.models.get_pretrained_cfg(tag)
        assert cfg.url.startswith('https://www.dropbox.com/s/') and cfg.url.endswith('?dl=1')
        assert top1 in cfg.description and 'reported by the authors' in cfg.description
        assert cfg.license == 'unknown'
        assert any('no license' in note for note in cfg.notes)
    assert timm.create_model('fishnet150').pretrained_cfg['tag'] == 'in1k'


def test_offline_pretrained_fails_fast_with_the_address(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('TORCH_HOME', '/nonexistent-torch-home')
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        timm.create_model('fishnet150.in1k_ls', pretrained=True)
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert 'https://www.dropbox.com/s/ajy9p6f97y45f1r/fishnet150_ckpt_welltrained.tar?dl=1' in msg
    assert "pretrained_cfg_overlay=dict(file='/path/to/fishnet150_ckpt_welltrained.tar')" in msg


def test_failed_download_gives_the_same_message(monkeypatch):
    """Online but unreachable: only the network call is replaced."""
    import urllib.request
    from urllib.error import URLError

    def no_network(*args, **kwargs):
        raise URLError('[Errno -2] Name or service not known')

    monkeypatch.setenv('HF_HUB_OFFLINE', '0')
    monkeypatch.setenv('TORCH_HOME', '/nonexistent-torch-home')
    monkeypatch.setattr(urllib.request, 'urlopen', no_network)
    with pytest.raises(PretrainedWeightsUnavailable, match=r'download failed: .*Name or service not known.*dl=1'):
        timm.create_model('fishnet99', pretrained=True)


def test_offline_failure_is_short_for_a_user(tmp_path):
    script = "import timm; timm.create_model('fishnet99', pretrained=True)"
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120,
                          env={**__import__('os').environ, 'HF_HUB_OFFLINE': '1', 'TORCH_HOME': str(tmp_path)})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith('fishzoo.errors.PretrainedWeightsUnavailable: pretrained weights for')
    assert len(lines) < 20  # the user's call, timm's factory, one message; no chained urllib traceback


def test_missing_local_file_is_named(tmp_path):
    missing = tmp_path / 'nope.tar'
    with pytest.raises(FileNotFoundError, match=f'{missing}: no such checkpoint file'):
        timm.create_model('fishnet99', pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))


def test_hubconf_pretrained_with_overlay(tmp_path):
    path = authors_checkpoint('fishnet99', tmp_path / 'ckpt.tar')
    repo = Path(__file__).resolve().parents[2]
    model = torch.hub.load(str(repo), 'fishnet99', source='local', pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(path)))
    reference = timm.create_model('fishnet99', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
