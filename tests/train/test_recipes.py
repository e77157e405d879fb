"""fishzoo.train.recipes: the recipe follows the situation, flags the user gives win, and the run folder's
train_config.yaml repeats the run."""
import dataclasses

import pytest
import yaml

from fishzoo.train import main, parse_args
from fishzoo.train.args import RECIPE_HELP, build_train_parser, given_flags
from fishzoo.train.recipes import RECIPE_KEYS, Situation, choose_recipe, min_positives, recipe_settings
from fishzoo.train.run_config import RunConfig

SCRATCH = Situation(finetuning=False, multilabel=False, train_images=1437, input_size=32, epochs=8, global_batch=64)


def _recipe(**changes):
    return choose_recipe(dataclasses.replace(SCRATCH, **changes)).values


def test_from_scratch_low_resolution():
    values = _recipe()
    assert (values['opt'], values['lr'], values['weight_decay'], values['sched']) == ('adamw', 3e-3, 0.05, 'cosine')
    assert values['scale'] == [0.8, 1.0] and values['warmup_epochs'] == 1
    assert 'layer_decay' not in values and 'aa' not in values and 'smoothing' not in values
    assert 'batch_size' not in values  # SCRATCH's batch is the user's
    assert _recipe(epochs=3)['warmup_epochs'] == 0


def test_fine_tuning_gets_a_lower_rate():
    assert _recipe(finetuning=True)['lr'] == 2e-3 and 'layer_decay' not in _recipe(finetuning=True)


def test_lr_follows_the_square_root_of_the_global_batch():
    assert _recipe(global_batch=256)['lr'] == pytest.approx(6e-3)
    assert _recipe(global_batch=16, finetuning=True)['lr'] == pytest.approx(1e-3)


def test_small_data_without_a_batch_flag_trains_at_global_batch_32():
    values = _recipe(batch_given=False)
    assert values['batch_size'] == 32 and values['lr'] == pytest.approx(2.12e-3)  # 3e-3 * sqrt(32 / 64)
    two_processes = _recipe(batch_given=False, batch_divisor=2, global_batch=128)
    assert two_processes['batch_size'] == 16 and two_processes['lr'] == pytest.approx(2.12e-3)
    assert 'batch_size' not in _recipe(batch_given=False, train_images=50_000)


def test_multilabel_crops_are_label_safe_and_thresholds_follow_the_positives():
    values = _recipe(multilabel=True, finetuning=True, input_size=224, min_val_positives=3)
    assert values['scale'][0] >= 0.7 and values['hflip'] == 0 and values['rotate'] == 0
    assert values['threshold_tuning'] == 'global'
    assert _recipe(multilabel=True, min_val_positives=40)['threshold_tuning'] == 'per-class'
    assert 'aa' not in _recipe(multilabel=True, train_images=100_000)


def test_normal_resolution_crops_by_data_size():
    assert _recipe(input_size=224)['scale'] == [0.35, 1.0]
    large = _recipe(input_size=224, train_images=100_000)
    assert large['scale'] == [0.08, 1.0] and large['aa'].startswith('rand-') and large['smoothing'] == 0.1
    assert _recipe(input_size=224, train_images=100_000, finetuning=True)['scale'] == [0.35, 1.0]


def _resolved(args, applied) -> RunConfig:
    """The flags with the recipe's values: what resolve_run makes of them; the flags themselves stay as parsed."""
    before = vars(args).copy()
    config = RunConfig.from_args(args).replace(**applied)
    assert vars(args) == before
    return config


def test_given_flags_win_and_another_optimizer_keeps_its_own_rates(tmp_path):
    cfg = tmp_path / 'r.yaml'
    cfg.write_text('weight-decay: 0.01\n')
    args = parse_args(['--data-dir', 'x', '--scale', '0.5', '1', '--config', str(cfg), '--epochs', '5'])
    assert {'scale', 'weight_decay', 'epochs', 'data_dir'} <= args.given and 'lr' not in args.given
    applied = recipe_settings(args, choose_recipe(SCRATCH))
    args = _resolved(args, applied)
    assert args.scale == [0.5, 1.0] and args.weight_decay == 0.01 and args.lr == 3e-3 and args.opt == 'adamw'
    assert 'scale' not in applied and applied['lr'] == 3e-3

    args = parse_args(['--data-dir', 'x', '--opt', 'sgd'])
    args = _resolved(args, recipe_settings(args, choose_recipe(SCRATCH)))
    assert (args.opt, args.lr, args.weight_decay) == ('sgd', 0.05, 1e-4)  # the flags' SGD defaults
    assert args.scale == [0.8, 1.0]  # augmentation still follows the situation

    small = dataclasses.replace(SCRATCH, batch_given=False)
    args = parse_args(['--data-dir', 'x'])
    args = _resolved(args, recipe_settings(args, choose_recipe(small)))
    assert args.batch_size == 32
    args = parse_args(['--data-dir', 'x', '-b', '16'])
    args = _resolved(args, recipe_settings(args, choose_recipe(dataclasses.replace(small, batch_given=True,
                                                                                    global_batch=16))))
    assert args.batch_size == 16 and args.lr == pytest.approx(1.5e-3)


def test_embedded_digits_keep_their_recipe():
    args = parse_args([])
    assert args.recipe.startswith('embedded digits') and args.lr == 3e-3 and 'lr' in args.given
    assert given_flags(['--lr', '0.1', '-b', '8']) == {'lr', 'batch_size'}


def test_every_recipe_key_is_a_flag_named_in_the_help():
    dests = {a.dest for a in build_train_parser()._actions}
    situations = [dict(), dict(finetuning=True), dict(multilabel=True), dict(input_size=224, train_images=100_000),
                  dict(batch_given=False)]
    chosen = set().union(*(_recipe(**s) for s in situations))
    assert chosen == set(RECIPE_KEYS)  # every key some recipe sets, and nothing unlisted
    for key in RECIPE_KEYS:
        assert key in dests and f"--{key.replace('_', '-')}" in RECIPE_HELP  # the --help epilog


def test_min_positives_counts_the_rarest_class():
    assert min_positives([[1, 0, 1], [1, 0, 0]]) == 0 and min_positives([[1, 1], [0, 1]]) == 1


def test_run_logs_the_recipe_and_writes_a_repeatable_config(image_dataset, tmp_path, caplog):
    out = tmp_path / 'run'
    argv = ['--data-dir', str(image_dataset / 'train'), '--model', 'fishnet_s64', '--img-size', '32',
            '--batch-size', '4', '--epochs', '1', '--output-dir', str(out)]
    with caplog.at_level('INFO', logger='fishzoo.train'):
        assert main(argv) == 0
    log = caplog.text
    assert 'holding out 20% of the training data' in log  # a single class-folder tree
    assert 'recipe for from scratch, single-label, small data' in log and 'low resolution (32 px)' in log
    assert 'opt adamw, lr 0.00075, weight-decay 0.05: AdamW from scratch, sqrt-scaled' in log  # batch 4
    saved = yaml.safe_load((out / 'train_config.yaml').read_text())
    assert saved['opt'] == 'adamw' and saved['scale'] == [0.8, 1.0] and saved['val-split'] == 0.2
    assert 'resume' not in saved and 'overwrite' not in saved
    # the saved file is a recipe: reading it back gives every value the run used
    again = parse_args(['--config', str(out / 'train_config.yaml')])
    for key, value in saved.items():
        assert getattr(again, key.replace('-', '_')) == value, key
