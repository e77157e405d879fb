"""What a hub folder's ``config.json`` may pass to a model constructor (its ``model_args``).

A folder from the Hub is someone else's file: its ``model_args`` go straight into the model's constructor
when timm builds it. Here they are checked before anything is built: every key must be one the
architecture takes, with a value of the right type in a sane range. fishzoo's own architectures declare
their keys (:func:`declare_model_args`, called from each model file) and nothing else is accepted for
them; timm's architectures get the common keys checked and any other key only as a plain scalar or a
short list of scalars (what their constructors take). Keys that steer timm's factory itself (where
weights come from, caches, feature wrapping) are never accepted from a file.
"""
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

_NAME = re.compile(r'^[A-Za-z0-9_.\-]{0,40}$')


@dataclass(frozen=True)
class Arg:
    """One constructor argument: ``kind`` is 'int', 'float', 'name' (a short identifier like 'relu'),
    'choice', 'ints' (a list of ints) or 'int_rows' (a list of lists of ints)."""
    kind: str
    low: float = 0
    high: float = 0
    choices: Tuple[Any, ...] = ()
    max_len: int = 0

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` does not fit (None when it does)."""
        if self.kind == 'choice':
            return None if value in self.choices else f'must be one of {", ".join(map(repr, self.choices))}'
        if self.kind == 'name':
            ok = isinstance(value, str) and _NAME.match(value)
            return None if ok else 'must be a short layer name such as "relu" or "batchnorm2d"'
        if self.kind in ('int', 'float'):
            return _number_problem(value, self.kind, self.low, self.high)
        rows = value if self.kind == 'int_rows' else [value]
        if self.kind == 'int_rows' and (not isinstance(value, list) or not 1 <= len(value) <= self.max_len):
            return f'must be a list of 1 to {self.max_len} lists of integers'
        for row in rows:
            if not isinstance(row, list) or not 1 <= len(row) <= (self.max_len if self.kind == 'ints' else 8):
                return f'must be a list of 1 to {self.max_len} integers'
            for item in row:
                why = _number_problem(item, 'int', self.low, self.high)
                if why:
                    return f'has an item that {why}'
        return None


def _number_problem(value: Any, kind: str, low: float, high: float) -> Optional[str]:
    types = (int,) if kind == 'int' else (int, float)
    if isinstance(value, bool) or not isinstance(value, types):
        return f'must be {"an integer" if kind == "int" else "a number"} from {low:g} to {high:g}'
    if not low <= value <= high:
        return f'must be from {low:g} to {high:g}'
    return None


def Int(low: int, high: int) -> Arg:  # noqa: N802  (reads like a type in the tables below)
    return Arg('int', low, high)


def Float(low: float, high: float) -> Arg:  # noqa: N802
    return Arg('float', low, high)


def Choice(*choices) -> Arg:  # noqa: N802
    return Arg('choice', choices=choices)


def Ints(low: int, high: int, max_len: int) -> Arg:  # noqa: N802
    return Arg('ints', low, high, max_len=max_len)


NAME = Arg('name')

# what every timm classifier takes; 10^6 classes is past any real label set, and the weights' own
# shapes are checked afterwards anyway (fishzoo.hub_folder)
COMMON_ARGS: Dict[str, Arg] = dict(
    num_classes=Int(0, 1_000_000),
    in_chans=Int(1, 1024),
    global_pool=NAME,
    drop_rate=Float(0, 1),
    drop_path_rate=Float(0, 1),
    drop_block_rate=Float(0, 1),
    proj_drop_rate=Float(0, 1),
    attn_drop_rate=Float(0, 1),
    img_size=Int(1, 8192),
)

# timm's factory arguments: where weights come from and how the model is wrapped, never a file's to set
FACTORY_ARGS = frozenset({
    'pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay', 'pretrained_model_args', 'pretrained_strict',
    'cache_dir', 'checkpoint_path', 'scriptable', 'exportable', 'no_jit', 'features_only', 'feature_cfg',
    'feature_cls', 'out_indices', 'output_stride', 'device', 'dtype', 'pretrained_filter_fn', 'kwargs_filter',
})

_DECLARED: Dict[str, Dict[str, Arg]] = {}


def declare_model_args(names: Iterable[str], args: Mapping[str, Arg]) -> None:
    """The constructor keys (beyond :data:`COMMON_ARGS`) a fishzoo architecture accepts from a config.json."""
    for name in names:
        _DECLARED[name] = {**COMMON_ARGS, **args}


def _plain(value: Any, depth: int = 0) -> bool:
    """A JSON scalar of modest size, or a short list of them (one level of nesting)."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return abs(value) <= 1_000_000
    if isinstance(value, str):
        return len(value) <= 64
    if isinstance(value, list) and depth < 2:
        return len(value) <= 64 and all(_plain(v, depth + 1) for v in value)
    return False


def model_args_problem(architecture: str, model_args: Mapping[str, Any]) -> Optional[str]:
    """The first reason ``model_args`` may not build ``architecture`` ('"model_args.KEY" ...'), or None."""
    declared = _DECLARED.get(architecture)
    for key, value in model_args.items():
        if key in FACTORY_ARGS or key.startswith('_'):
            return f'"model_args.{key}" is not a model argument (a config.json cannot set it)'
        spec = declared.get(key) if declared is not None else COMMON_ARGS.get(key)
        if spec is None:
            if declared is not None:
                return (f'"model_args.{key}" is not an argument of {architecture} '
                        f'(it takes {", ".join(sorted(declared))})')
            if not _plain(value):
                return f'"model_args.{key}" must be a number, a short string or a short list of them'
            continue
        if key == 'img_size' and isinstance(value, list) and len(value) == 2:
            why = next(filter(None, (spec.problem(v) for v in value)), None)
        else:
            why = spec.problem(value)
        if why:
            return f'"model_args.{key}" {why}, got {_show(value)}'
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'
