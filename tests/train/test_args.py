"""fishzoo.train.args: flags, YAML recipes and their precedence, bad config files."""
from pathlib import Path

import pytest

from fishzoo.train import DIGITS_RECIPE, ConfigError, build_parser, load_config, parse_args

REPO = Path(__file__).resolve().parents[2]


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
