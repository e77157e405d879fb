"""What a hub folder's ``config.json`` may hold: the ``model_args`` passed to a model constructor, the
preprocessing and labels, and class counts that agree.

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

import timm

_NAME = re.compile(r'^[A-Za-z0-9_.\-]{0,40}$')
_ARCHITECTURE = re.compile(r'^[A-Za-z0-9_\-]{1,80}(\.[A-Za-z0-9_\-]{1,80})?$')


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
# shapes are checked afterwards anyway (fishzoo.hub.folder)
COMMON_ARGS: Dict[str, Arg] = dict(
    num_classes=Int(0, 1_000_000),  # MAX_CLASSES
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


def _as_json(value: Any) -> Any:
    """``value`` as a config.json would hold it (tuples as lists), or None for what no file can hold (a class,
    a function, a module): those only a Python caller gives, and they are not sizes."""
    if isinstance(value, (tuple, list)):
        items = [_as_json(v) for v in value]
        return None if any(i is None for i in items) and any(v is not None for v in value) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None


def call_problem(architecture: str, kwargs: Mapping[str, Any]) -> Optional[str]:
    """The first reason the arguments an entry point of ``architecture`` received may not build it, whoever
    called it (fishzoo, timm's ``local-dir:`` path, transformers' TimmWrapper passing a config's ``model_args``, a
    script): sizes and rates out of their bounds ('num_classes must be from 0 to 1e+06, got 1000000000'). Keys
    the schema does not declare and values no file can hold (a norm layer given as a class) are the caller's."""
    declared = _DECLARED.get(architecture, COMMON_ARGS)
    for key, value in kwargs.items():
        spec = declared.get(key)
        plain = _as_json(value)
        if spec is None or plain is None or key in FACTORY_ARGS:
            continue
        if key == 'img_size' and isinstance(plain, list) and len(plain) == 2:
            why = next(filter(None, (spec.problem(v) for v in plain)), None)
        elif spec.kind == 'name' and not isinstance(plain, str):
            continue
        else:
            why = spec.problem(plain)
        if why:
            return f'{key} {why}, got {_show(value)}'
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'


# --- the whole config ----------------------------------------------------------------------------

MAX_CLASSES = 1_000_000


def config_problem(config: Any) -> Optional[str]:
    """The first reason a hub folder's config (parsed ``config.json``) may not be used, or None: not an object,
    no architecture timm knows, a class count out of range, ``model_args`` the architecture does not take,
    or preprocessing and labels of the wrong kind (:func:`preprocessing_problem`)."""
    if not isinstance(config, dict):
        return f'expected a JSON object, got {type(config).__name__}'
    arch = config.get('architecture')
    if not isinstance(arch, str) or not arch:
        return 'no "architecture" name'
    if not _ARCHITECTURE.match(arch):  # it reaches the card's title and the demo page's
        return f'"architecture" must be a timm model name (with a .tag), got {_show(arch)}'
    if not timm.is_model(arch.split('.')[0]):
        return f'unknown architecture {arch!r} (not a timm or fishzoo model)'
    num_classes = config.get('num_classes', 0)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 0 <= num_classes <= MAX_CLASSES:
        return f'"num_classes" must be a non-negative integer up to {MAX_CLASSES}, got {num_classes!r}'
    for key in ('pretrained_cfg', 'model_args'):
        if key in config and not isinstance(config[key], dict):
            return f'"{key}" must be a JSON object'
    return model_args_problem(arch.split('.')[0], config.get('model_args', {})) or preprocessing_problem(config)


# --- preprocessing and labels ----------------------------------------------------------------

INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'lanczos', 'box', 'hamming', 'random')
CROP_MODES = ('center', 'squash', 'border')
MAX_INPUT_SIDE = 4096  # px: a side above this is no model's input size, and would make every image huge
MAX_RESIZE_SIDE = 8192  # px: the short side an image is resized to before the center crop (size / crop_pct)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def preprocessing_problem(config: dict) -> Optional[str]:
    """What is wrong with a config's preprocessing and labels, or None: wrong types would fail deep in the
    transforms, and the input size and crop fraction decide how much memory reading one image takes."""
    cfg = config.get('pretrained_cfg') or {}
    size = cfg.get('input_size')
    channels = None
    if size is not None:
        if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in size)
                and 1 <= size[0] <= 4 and all(8 <= v <= MAX_INPUT_SIDE for v in size[1:])):
            return (f'"pretrained_cfg.input_size" must be [channels 1-4, height, width] with sides from 8 to '
                    f'{MAX_INPUT_SIDE} px, got {size!r}')
        channels = size[0]
    for key in ('mean', 'std'):
        value = cfg.get(key)
        if value is None:
            continue
        if not (isinstance(value, list) and value and all(_number(v) for v in value)
                and (channels is None or len(value) == channels) and (key == 'mean' or min(value) > 0)):
            return (f'"pretrained_cfg.{key}" must be {channels or "one or more"} '
                    f'{"positive " if key == "std" else ""}numbers (one per channel), got {value!r}')
    interpolation = cfg.get('interpolation')
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        return f'"pretrained_cfg.interpolation" must be one of {", ".join(INTERPOLATIONS)}, got {interpolation!r}'
    crop_pct = cfg.get('crop_pct')
    if crop_pct is not None and not (_number(crop_pct) and 0.1 <= crop_pct <= 2.0):
        return f'"pretrained_cfg.crop_pct" must be a number from 0.1 to 2, got {crop_pct!r}'
    if crop_pct is not None and channels is not None and max(size[1:]) / crop_pct > MAX_RESIZE_SIDE:
        return (f'"pretrained_cfg" resizes every image to {max(size[1:]) / crop_pct:.0f} px before cropping '
                f'(input_size {size}, crop_pct {crop_pct}); at most {MAX_RESIZE_SIDE} px')
    crop_mode = cfg.get('crop_mode')
    if crop_mode is not None and crop_mode not in CROP_MODES:
        return f'"pretrained_cfg.crop_mode" must be one of {", ".join(CROP_MODES)}, got {crop_mode!r}'
    labels = config.get('label_names', cfg.get('label_names'))
    if labels is not None and not (isinstance(labels, list) and all(isinstance(n, (str, int)) and
                                                                     not isinstance(n, bool) for n in labels)):
        return f'"label_names" must be a list of names, got {type(labels).__name__}'
    thresholds = config.get('thresholds')
    if thresholds is not None and not (isinstance(thresholds, list) and all(_number(t) and 0 <= t <= 1
                                                                            for t in thresholds)):
        return '"thresholds" must be a list of numbers between 0 and 1'
    return None


def class_count_problem(config: dict) -> Optional[str]:
    """The class counts a config states (top level, ``model_args``, ``pretrained_cfg``, the label names, the
    thresholds) disagree, or None: one of them would be silently ignored (timm drops a pretrained head whose
    class count differs from the one asked for, leaving a randomly initialised classifier)."""
    cfg = config.get('pretrained_cfg') or {}
    labels = config.get('label_names', cfg.get('label_names'))
    thresholds = config.get('thresholds')
    counts = {'num_classes': config.get('num_classes'),
              'model_args.num_classes': (config.get('model_args') or {}).get('num_classes'),
              'pretrained_cfg.num_classes': cfg.get('num_classes'),
              'label_names': len(labels) if labels is not None else None,
              'thresholds': len(thresholds) if thresholds is not None else None}
    stated = {k: v for k, v in counts.items() if v is not None}
    if len(set(stated.values())) > 1:
        return ('its class counts disagree (' + ', '.join(f'{k} {v}' for k, v in stated.items())
                + '); a model loaded from it would get a classifier the weights do not hold')
    return None
