"""fishzoo.finetune: which parameters train in each mode, frozen BatchNorm statistics, thresholds, and the
fine-tuning and multi-label paths of fishzoo-train end to end."""
import csv
import json

import pytest
import timm
import timm.optim
import torch

import fishzoo  # noqa: F401
from fishzoo import finetune
from fishzoo.cli import main as cli_main
from fishzoo.data import write_digits_multilabel
from fishzoo.train import main
from tests.conftest import TRAIN_ARGS

MODELS = ['fishnet_s64', 'resnet18']  # fishzoo's and timm's own


def _bn_state(model):
    return {n: b.clone() for n, b in model.named_buffers() if 'running' in n}


def _train_steps(model, steps=3, size=32):
    optimizer = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(torch.randn(4, 3, size, size)).logsumexp(1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize('name', MODELS)
def test_new_head_names_the_reinitialised_tensors(name, caplog):
    model = timm.create_model(name, num_classes=10)
    with caplog.at_level('INFO', logger='fishzoo.finetune'):
        names = finetune.new_head(model, 4)
    assert names == [f'{model.pretrained_cfg["classifier"]}.weight', f'{model.pretrained_cfg["classifier"]}.bias']
    assert model.get_classifier().out_features == 4
    assert '10 -> 4 classes' in caplog.text


@pytest.mark.parametrize('name', MODELS)
def test_frozen_backbone_trains_the_classifier_only(name):
    model = timm.create_model(name, num_classes=3)
    finetune.freeze_backbone(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(finetune.classifier_names(model))
    assert finetune.trainable_parameters(model) == sum(p.numel() for p in model.get_classifier().parameters())
    frozen_before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    stats_before = _bn_state(model)
    head_before = model.get_classifier().weight.clone()
    _train_steps(model)
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    for n, b in _bn_state(model).items():
        assert torch.equal(b, stats_before[n]), n  # FrozenBatchNorm2d: statistics fixed in train mode too
    assert not torch.equal(model.get_classifier().weight, head_before)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize('name', MODELS)
def test_gradual_unfreezing_schedule_and_frozen_statistics(name):
    model = timm.create_model(name, num_classes=3)
    unfreezer = finetune.GradualUnfreezer(model, freeze_epochs=2)
    groups = unfreezer.groups
    assert len(groups) >= 4 and set(finetune.classifier_names(model)) <= set(groups[-1])

    def trainable_groups():
        params = dict(model.named_parameters())
        flags = [all(params[n].requires_grad for n in g) for g in groups]
        assert all(all(params[n].requires_grad == f for n in g) for g, f in zip(groups, flags))
        return flags

    for epoch, expected in ((0, 1), (1, 1), (2, 2), (3, 3)):
        unfreezer.set_epoch(epoch)
        assert trainable_groups() == [False] * (len(groups) - expected) + [True] * expected, epoch
    assert unfreezer.set_epoch(4) == [len(groups) - 4]  # returns what it just unfroze

    # frozen stages keep their BN statistics in train mode; trainable ones update theirs
    unfreezer.set_epoch(2)
    stem = groups[0]
    stats_before = _bn_state(model)
    _train_steps(model, steps=2)
    moved = {n for n, b in _bn_state(model).items() if not torch.equal(b, stats_before[n])}
    assert moved, 'trainable stages should update their statistics'
    frozen_prefixes = {n.rsplit('.', 1)[0] for n in stem}
    assert not {n for n in moved if n.rsplit('.', 1)[0] in frozen_prefixes}
    unfreezer.set_epoch(100)
    assert all(p.requires_grad for p in model.parameters())


def test_optimizer_built_before_unfreezing_updates_unfrozen_stages():
    model = timm.create_model('fishnet_s64', num_classes=3)
    late = timm.create_model('fishnet_s64', num_classes=3)
    finetune.GradualUnfreezer(late, freeze_epochs=0)
    with pytest.raises(ValueError, match='create it over all parameters before the GradualUnfreezer'):
        finetune.GradualUnfreezer(late, optimizer=timm.optim.create_optimizer_v2(late, 'adamw', lr=1e-2))

    optimizer = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-2)
    unfreezer = finetune.GradualUnfreezer(model, freeze_epochs=0, optimizer=optimizer)
    stem_weight = model.stem.conv1.conv.weight
    before = stem_weight.clone()
    unfreezer.set_epoch(100)
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    assert not torch.equal(stem_weight, before)


@pytest.mark.parametrize('mode', ['frozen', 'full', 'gradual'])
def test_finetune_flags(trained_run, image_dataset, tmp_path, mode):
    out = tmp_path / mode
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(out), '--epochs', '3', *TRAIN_ARGS,
                 '--model', f'local-dir:{trained_run}', '--pretrained', '--finetune', mode,
                 '--freeze-epochs', '1', '--layer-decay', '0.8']) == 0
    history = json.loads((out / 'metrics.json').read_text())
    counts = [r['trainable_params'] for r in history[1:]]
    head = 264 * 3 + 3
    total = sum(p.numel() for p in timm.create_model('fishnet_s64', num_classes=3).parameters())
    if mode == 'frozen':
        assert counts == [head] * 3
    elif mode == 'full':
        assert counts == [total] * 3
    else:
        assert head <= counts[0] < counts[1] < counts[2] < total
    assert history[0]['epoch'] == 0 and 'train_loss' not in history[0]
    card = (out / 'README.md').read_text()  # the local base model by its folder name, never its path
    assert str(trained_run) not in card
    # a fine-tune says what it is and what it started from, not "`shapes` trained with ..."
    assert f'`fishnet_s64` fine-tuned from `{trained_run.name}` with fishzoo-train' in card


@pytest.mark.slow
def test_multilabel_end_to_end_with_thresholds_and_predict(tmp_path, capsys):
    csv_path = write_digits_multilabel(tmp_path / 'ml', images=160, seed=1)
    out = tmp_path / 'run'
    assert main(['--train-csv', str(csv_path), '--val-split', '0.25', '--output-dir', str(out), '--epochs', '2',
                 *TRAIN_ARGS, '--in-chans', '1', '--scale', '0.9', '1', '--threshold-tuning', 'per-class']) == 0
    history = json.loads((out / 'metrics.json').read_text())
    for record in history:
        for key in ('val_f1_micro', 'val_f1_macro', 'val_map', 'val_subset_acc', 'val_loss'):
            assert isinstance(record[key], float), key
    assert all('train_loss' in r for r in history[1:]) and history[0]['epoch'] == 0
    # micro-F1 at 0.5 and at the best global threshold (the grid holds 0.5: never lower)
    assert all(r['val_f1_micro_best'] >= r['val_f1_micro'] and 0 < r['val_best_threshold'] < 1 for r in history)
    assert history[-1]['val_samples'] == 40
    tuned = json.loads((out / 'thresholds.json').read_text())
    assert tuned['mode'] == 'per-class' and tuned['f1_micro_after'] >= tuned['f1_micro_before']
    assert history[-1]['val_f1_micro_tuned'] == pytest.approx(tuned['f1_micro_after'])
    config = json.loads((out / 'config.json').read_text())
    assert config['multilabel'] and config['thresholds'] == list(tuned['thresholds'].values())
    assert config['label_names'] == [str(d) for d in range(10)]
    assert config['problem_type'] == 'multi_label_classification'  # transformers' pipeline: sigmoid scores
    # the card's headline is what the published model decides with: micro-F1 at its tuned thresholds
    from huggingface_hub import ModelCard
    card = ModelCard.load(out / 'README.md')
    first, *rest = card.data.eval_results or [None]
    assert card.data.datasets is None and first is None  # a local CSV: no Hub dataset id, so no model-index
    results = card.text[card.text.index('## Results'):]
    assert results.index(f"| Micro F1 at the published thresholds (%) | {100 * tuned['f1_micro_after']:.2f} |") < \
        results.index('| Micro F1 (%) |')
    assert f"| 9 | {tuned['thresholds']['9']:.3f} |" in card.text  # thresholds with their class names
    assert str(tmp_path) not in card.text and 'license:' not in card.text.split('---')[1]

    images = [str(csv_path.parent / 'images' / f'{i:04d}.png') for i in range(4)]
    out_csv = tmp_path / 'pred.csv'
    assert cli_main(['predict', str(out), *images, '--output', str(out_csv)]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(out_csv.open()))
    thresholds = dict(zip(config['label_names'], config['thresholds']))
    assert all(float(r['probability']) >= thresholds[r['label']] for r in rows if r['label'])  # thresholds applied


@pytest.mark.slow
def test_multilabel_flag_on_single_label_folders(image_dataset, tmp_path):
    out = tmp_path / 'onehot'
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(out), '--epochs', '1', *TRAIN_ARGS,
                 '--multilabel']) == 0
    assert 'val_f1_micro' in json.loads((out / 'metrics.json').read_text())[-1]
