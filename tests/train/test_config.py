"""The run configuration is resolved once, into a read-only RunConfig; the parsed flags are never changed."""
import pytest

from fishzoo.errors import ConfigError
from fishzoo.train import RunConfig, build_parts, parse_args, resolve_run
from tests.conftest import TRAIN_ARGS


def test_run_config_is_read_only_and_replace_returns_a_copy():
    config = RunConfig(dict(lr=0.1, epochs=3))
    with pytest.raises(AttributeError, match='read-only'):
        config.lr = 0.2
    with pytest.raises(AttributeError, match='read-only'):
        del config.lr
    changed = config.replace(lr=0.2)
    assert (config.lr, changed.lr, changed.epochs) == (0.1, 0.2, 3)
    with pytest.raises(AttributeError, match="no setting 'lrr'"):
        config.replace(lrr=0.2)
    with pytest.raises(AttributeError, match="no setting 'nope'"):
        getattr(config, 'nope')  # noqa: B009  (the attribute access is the test)


def test_resolve_run_decides_without_touching_the_flags(image_dataset, tmp_path):
    # one class-folder tree (no train/ and val/), no --pretrained, no --in-chans, no optimizer flags
    args = parse_args(['--data-dir', str(image_dataset / 'train'), '--output-dir', str(tmp_path / 'o'),
                       '--model', 'fishnet_s64', '--img-size', '32', '--epochs', '1', '--workers', '0', '-b', '4'])
    before = vars(args).copy()
    run = resolve_run(args)
    assert vars(args) == before
    config = run.config
    assert config.val_split == 0.2 and config.in_chans == 3  # hold-out and channels decided
    assert config.opt == 'adamw' and config.recipe.startswith('from scratch')  # the recipe applied
    assert len(run.data.val) > 0 and run.data.train.transform is not None  # held out; transforms set
    with pytest.raises(AttributeError):
        config.lr = 1.0


def test_build_parts_wants_the_lr_found_first(image_dataset, tmp_path):
    args = parse_args(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), *TRAIN_ARGS,
                       '--lr', 'auto'])
    run = resolve_run(args)
    with pytest.raises(ConfigError, match='find the learning rate first'):
        build_parts(run)
    parts = build_parts(run.replace_config(lr=0.01))
    assert parts.config.lr == 0.01 and run.config.lr == 'auto'
