"""fishzoo.train.args: flags, YAML recipes and their precedence, bad config files."""
import re

import pytest

from fishzoo.train import (
    DIGITS_RECIPE,
    ConfigError,
    build_train_parser,
    load_config,
    parse_args,
)
from fishzoo.train import main as train_main
from tests.helpers.hostile import REPO


def test_no_options_is_the_digits_recipe_of_configs():
    assert load_config(str(REPO / 'configs' / 'digits.yaml'), build_train_parser()) == DIGITS_RECIPE
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
    ('report-to: mlflow\n', 'report-to must be one of none, tensorboard, trackio, wandb'),
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


def test_every_flag_has_help():
    undocumented = [a.option_strings[-1] for a in build_train_parser()._actions
                    if a.option_strings and a.dest != 'help' and not a.help]
    assert undocumented == []
    text = ' '.join(build_train_parser().format_help().split())
    # flags a recipe sets show their default as the one used where no recipe applies
    for shown in ('0.05 where no recipe sets it)', '(default: 30)', '0.0001 where no recipe sets it)',
                  '(default: output/train)'):
        assert shown in text, shown


def test_timm_flag_aliases(tmp_path):
    cfg = tmp_path / 'r.yaml'
    cfg.write_text('lr: 0.5\ncompile: true\n')
    args = parse_args(['-c', str(cfg), '--checkpoint-hist', '5', '--amp', '--amp-dtype', 'bfloat16'])
    assert (args.lr, args.compile, args.keep_checkpoints, args.mixed_precision) == (0.5, 'inductor', 5, 'bf16')
    assert parse_args(['--torchcompile']).compile == 'inductor'
    assert parse_args(['--compile', 'aot_eager']).compile == 'aot_eager'
    assert parse_args(['--amp']).mixed_precision == 'bf16'  # float16 needs a GPU; this machine has none
    assert parse_args(['--amp', '--mixed-precision', 'no']).mixed_precision == 'no'  # the explicit flag wins
    try:
        assert parse_args(['--log-wandb']).report_to == 'wandb'
    except ConfigError as e:
        assert 'the wandb package is not installed' in str(e)


def test_val_split_is_a_fraction_or_a_split_name():
    assert parse_args(['--data-dir', 'd', '--val-split', '0.25']).val_split == 0.25
    assert parse_args(['--dataset', 'imagefolder', '--data-dir', 'd', '--val-split', 'validation']).val_split == \
        'validation'
    with pytest.raises(ConfigError, match='--val-split validation: a split name is for --dataset'):
        parse_args(['--data-dir', 'd', '--val-split', 'validation'])


def test_help_says_the_recipe_sets_its_flags(capsys):
    """--help listed SGD, 0.05 as the defaults where the recipe trains with AdamW at 3e-3."""
    with pytest.raises(SystemExit):
        train_main(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert "--opt OPT timm optimizer name ('sgd', 'adamw', 'lamb', ...) (default: the recipe's choice for your " \
           'data, named in the log; sgd where no recipe sets it)' in text


@pytest.mark.parametrize('flags, message', [
    (['--img-size', '0'], '--img-size must be from 8 to 4096 px, got 0'),  # was silently ignored, yet recorded
    (['--img-size', '100000'], '--img-size must be from 8 to 4096 px, got 100000'),  # was a MemoryError in resize
    (['--drop', 'nan'], '--drop is a probability from 0 to below 1, got nan'),
    (['--drop-path', '5'], '--drop-path is a probability from 0 to below 1, got 5.0'),
])
def test_sizes_and_rates_are_bounded(flags, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_args(flags)
