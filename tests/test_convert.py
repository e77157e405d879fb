"""fishzoo convert / scripts/convert_fishnet.py: the authors' checkpoint in, a hub folder out."""
import json
import subprocess
import sys

import pytest
import timm
import torch
from huggingface_hub import ModelCard

import fishzoo  # noqa: F401
from fishzoo.cli import main
from tests.helpers.hostile import (
    REPO,
    evil_checkpoint,
)
from tests.models.test_fishnet_weights import authors_checkpoint


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return authors_checkpoint('fishnet99', tmp_path_factory.mktemp('ckpt') / 'fishnet99_ckpt.tar')


def test_script_converts_to_a_loadable_hub_folder(checkpoint, tmp_path):
    out = tmp_path / 'fishnet99.in1k'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'scripts' / 'convert_fishnet.py'), 'fishnet99', str(checkpoint),
         '--output-dir', str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'app.py', 'config.json', 'model.safetensors',
                                                     'requirements.txt']

    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'fishnet99' and len(config['label_names']) == 1000
    assert config['label_names'][0] == 'n01440764'
    card = ModelCard.load(out / 'README.md')
    assert card.data.license == 'other' and card.data.datasets == ['imagenet-1k']
    top1 = next(r for r in card.data.eval_results if r.metric_type == 'accuracy')
    assert top1.metric_value == 77.41
    assert 'reported by the FishNet authors' in top1.source_name
    assert 'Numbers reported by the FishNet authors, not measured by fishzoo.' in card.text
    assert 'no license' in card.text

    converted = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    direct = timm.create_model('fishnet99', pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint)))
    x = torch.randn(1, 3, 96, 128)
    assert torch.equal(converted(x), direct.eval()(x))


def test_cli_tag_and_refusals(checkpoint, tmp_path, capsys):
    out = tmp_path / 'out'
    assert main(['convert', 'fishnet99.in1k', str(checkpoint), '--output-dir', str(out)]) == 0
    assert main(['convert', 'fishnet99', str(checkpoint), '--output-dir', str(out)]) == 2
    assert 'already holds a model; pass --overwrite' in capsys.readouterr().err
    assert main(['convert', 'fishnet99', str(checkpoint), '--output-dir', str(out), '--overwrite']) == 0
    assert main(['convert', 'fishnet150', str(checkpoint), '--output-dir', str(tmp_path / 'o2')]) == 2
    err = capsys.readouterr().err
    assert 'the checkpoint does not fit fishnet150' in err and 'missing keys' in err and str(checkpoint) in err
    assert main(['convert', 'resnet50', str(checkpoint), '--output-dir', str(tmp_path / 'o3')]) == 2
    assert "ARCH must be one of fishnet99, fishnet150, fishnet201" in capsys.readouterr().err
    assert main(['convert', 'fishnet99.bogus', str(checkpoint), '--output-dir', str(tmp_path / 'o4')]) == 2
    assert "unknown tag 'fishnet99.bogus'" in capsys.readouterr().err
    assert main(['convert', 'fishnet99', str(tmp_path / 'missing.tar'), '--output-dir', str(tmp_path / 'o5')]) == 2
    assert 'missing.tar: no such checkpoint file' in capsys.readouterr().err


def test_convert_and_push(checkpoint, tmp_path, monkeypatch):
    import huggingface_hub.hf_api
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import CommitInfo, RepoUrl
    sent = {}

    def create_commit(api, repo_id, operations, **kwargs):
        sent.update({op.path_in_repo: op for op in operations})
        return CommitInfo(commit_url='https://huggingface.co/me/x/commit/1', commit_message='',
                          commit_description='', oid='1' * 40)

    monkeypatch.setenv('HF_TOKEN', 'hf_abcdefghijklmnop')
    monkeypatch.setattr(huggingface_hub.hf_api, 'is_xet_available', lambda: False)
    monkeypatch.setattr(HfApi, 'create_repo', lambda api, repo_id, **kw: RepoUrl(f'https://huggingface.co/{repo_id}'))
    monkeypatch.setattr(HfApi, '_validate_yaml', lambda api, content, **kw: None)
    monkeypatch.setattr(HfApi, 'create_commit', create_commit)
    out = tmp_path / 'out'
    assert main(['convert', 'fishnet99', str(checkpoint), '--output-dir', str(out),
                 '--push-to-hub', 'me/fishnet99.in1k']) == 0
    assert sorted(sent) == ['README.md', 'app.py', 'config.json', 'model.safetensors', 'requirements.txt']
    assert "timm.create_model('hf-hub:me/fishnet99.in1k', pretrained=True)" in (out / 'README.md').read_text()


def test_payload_via_convert_script(tmp_path, marker):
    path = evil_checkpoint(tmp_path / 'evil.tar', marker)
    proc = subprocess.run([sys.executable, str(REPO / 'scripts' / 'convert_fishnet.py'), 'fishnet99', str(path),
                           '--output-dir', str(tmp_path / 'out')], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and 'weights_only' in lines[0]
    assert not (tmp_path / 'out' / 'model.safetensors').exists()
