"""fishzoo.train.lr_find: the LR range test restores the model, stops on divergence, and --lr-find / --lr auto
work from the command line."""
import json

import pytest
import torch
import torch.nn as nn

from fishzoo.train import main, parse_args
from fishzoo.train.lr_find import lr_range_test, valley
from tests.conftest import TRAIN_ARGS


def _toy_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True,
                                         generator=g)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    return model, loader


def test_range_test_restores_the_model_and_stops_when_the_loss_diverges():
    model, loader = _toy_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = lr_range_test(model, loader, nn.CrossEntropyLoss(), lambda m: torch.optim.SGD(m.parameters(), lr=1e-7),
                          torch.device('cpu'), start_lr=1e-4, end_lr=1e4, steps=200)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN buffers too
    assert found.lrs == sorted(found.lrs) and found.lrs[0] == pytest.approx(1e-4)
    assert len(found.lrs) < 200  # SGD at 10^4 diverges long before the end
    assert found.lr_min == pytest.approx(found.lr_at_min / 10)
    assert found.lrs[0] <= found.suggestion < found.lr_at_min  # valley: on the falling stretch, before the minimum
    assert min(found.losses) < found.losses[0]  # the loss fell before it rose


def test_valley_is_the_middle_of_the_longest_fall_despite_noise():
    flat = [5.0] * 10
    fall = [4.0, 3.5, 3.6, 3.0, 2.5, 2.6, 2.0, 1.5, 1.0, 0.5]  # two noisy bumps on the way down
    rise = [1.0, 3.0, 9.0]
    losses = flat + fall + rise
    assert 12 <= valley(losses) <= 16  # the middle of the fall, not the flat start or the minimum (19)
    assert valley([3.0, 2.0, 1.0]) == 1 and valley([1.0]) == 0 and valley([1.0, 2.0, 3.0]) == 0


def test_lr_auto_in_recipes_and_flags(tmp_path):
    cfg = tmp_path / 'r.yaml'
    cfg.write_text('lr: auto\n')
    assert parse_args(['--config', str(cfg)]).lr == 'auto'
    assert parse_args(['--lr', 'AUTO']).lr == 'auto'


def test_lr_find_then_lr_auto(image_dataset, tmp_path, capsys, caplog):
    common = ['--data-dir', str(image_dataset), *TRAIN_ARGS, '--lr-find-steps', '20']
    out = tmp_path / 'find'
    assert main([*common, '--output-dir', str(out), '--lr-find']) == 0
    found = json.loads((out / 'lr_find.json').read_text())
    assert 10 < len(found['lrs']) <= 20  # --lr-find-steps (the sweep may stop early on divergence)
    assert (out / 'lr_find.png').read_bytes()[:4] == b'\x89PNG' and not (out / 'model.safetensors').exists()
    assert f"suggested lr: {found['suggestion']:.2e}" in capsys.readouterr().out
    with caplog.at_level('INFO', logger='fishzoo.train'):
        assert main([*common, '--output-dir', str(tmp_path / 'auto'), '--epochs', '1', '--lr', 'auto']) == 0
    assert '--lr auto: training with lr' in caplog.text
    history = json.loads((tmp_path / 'auto' / 'metrics.json').read_text())
    assert history[-1]['val_top1'] >= 0 and (tmp_path / 'auto' / 'lr_find.json').exists()
