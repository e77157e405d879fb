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


@pytest.mark.parametrize('amx, env, device, expected', [
    (True, None, 'cpu', 'bf16'),  # AMX-BF16: bf16 autocast
    (False, None, 'cpu', 'no'),  # no bf16 instructions (VNNI only): fp32
    (True, 'no', 'cpu', 'bf16'),  # accelerate launch's default 'no' is not a choice
    (True, 'fp16', 'cpu', None),  # accelerate's config asked for 16 bits: its word stands
    (True, None, 'cuda', None),  # GPUs: accelerate's config decides, as before
])
def test_mixed_precision_auto(monkeypatch, fake_cpu, caplog, amx, env, device, expected):
    import torch

    from fishzoo.train.command import mixed_precision
    fake_cpu('amx' if amx else 'vnni')
    if env is None:
        monkeypatch.delenv('ACCELERATE_MIXED_PRECISION', raising=False)
    else:
        monkeypatch.setenv('ACCELERATE_MIXED_PRECISION', env)
    with caplog.at_level('INFO', logger='fishzoo'):
        assert mixed_precision('auto', torch.device(device)) == expected
    if expected == 'bf16':
        assert 'mixed precision: bf16 autocast on the CPU, as bf16 2.50x fp32 (table: Intel Xeon with AMX-BF16' \
            in caplog.text
        assert '--mixed-precision no overrides' in caplog.text
    if expected == 'no':
        assert 'none (fp32)' in caplog.text and 'this CPU has no bf16 instructions' in caplog.text
    for explicit in ('no', 'bf16', 'fp16'):  # the flag always wins
        assert mixed_precision(explicit, torch.device(device)) == explicit


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one mixed-precision setting per process; this test creates two, and leaves none."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_the_accelerator_trains_in_the_chosen_precision(monkeypatch, fake_cpu, tmp_path, fresh_accelerator_state):
    import torch
    from accelerate.state import AcceleratorState

    from fishzoo.train.command import create_accelerator

    class Probe(torch.nn.Linear):
        """Records the autocast state its forward pass runs in."""
        def forward(self, x):
            self.seen = torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu')
            return super().forward(x)

    monkeypatch.delenv('ACCELERATE_MIXED_PRECISION', raising=False)
    assert parse_args([]).mixed_precision == 'auto'
    for kind, expected, dtype in (('amx', 'bf16', torch.bfloat16), ('vnni', 'no', False)):
        fake_cpu(kind)
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = create_accelerator(parse_args(['--output-dir', str(tmp_path)]))
        assert accelerator.mixed_precision == expected
        probe = Probe(4, 2)
        accelerator.prepare(probe)(torch.ones(1, 4))
        assert probe.seen == dtype


def test_an_image_size_below_the_models_minimum_is_one_sentence(image_dataset, tmp_path, capsys):
    from fishzoo.train import main
    assert main(['--data-dir', str(image_dataset), '--output-dir', str(tmp_path / 'o'), '--model', 'fishnet99',
                 '--img-size', '16', '--epochs', '1']) == 2
    assert capsys.readouterr().err.strip() == \
        'fishzoo-train: --img-size 16: fishnet99 takes images of at least 32 px'
