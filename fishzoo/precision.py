"""The precision policy: what a model computes in, wherever fishzoo runs it, and why.

Every place that runs a model asks here: the fast path (``optimize_for_inference``), ``fishzoo predict``,
``fishzoo export``, training's mixed precision, ``fishzoo info`` and the benchmarks. Each passes what the
user asked for and where the model runs, and gets a :class:`Precision`: what runs, the reason (logged where
it is decided), and how to apply it (a torch autocast, OpenVINO's hint, Accelerate's setting). A value that
is not a precision, or bf16 asked of a runtime that runs fp32 only, is one :class:`~fishzoo.errors.ConfigError`.

What ``'auto'`` is, by where the model runs:

- torch on the CPU, inference (:func:`for_torch`) and training (:func:`for_training`): bf16 autocast where it
  measurably runs faster than fp32 (:func:`cpu_decision`: the model's own work probed once per machine by
  :mod:`fishzoo.precision_probe`, or the microarchitectures measured so far), fp32 elsewhere and on CPUs
  without bf16 instructions;
- torch on CUDA: bf16 autocast (fp16 on GPUs without bf16); training leaves it to Accelerate's configuration;
- other torch devices (mps, xpu): fp32;
- a runtime (:func:`for_runtime`): OpenVINO picks for the CPU itself (:data:`RUNTIME_DEFAULT`: bf16 where the
  CPU has bf16 units) unless the export recorded otherwise; onnxruntime, ExecuTorch and LiteRT run an fp32
  model in fp32.

Names: fishzoo's are 'fp32', 'bf16', 'fp16' everywhere (flags, records, logs); OpenVINO's 'f32' is read as
'fp32' (:func:`parse`) and written only where OpenVINO is called (:attr:`Precision.openvino_hint`).
"""
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from fishzoo.errors import ConfigError
from fishzoo.precision_probe import MARGIN, ProbeWork, bf16_speedup, table_speedup

_logger = logging.getLogger(__name__)

PRECISIONS = ('auto', 'fp32', 'bf16')
_ALIASES = {'f32': 'fp32', 'float32': 'fp32', 'bfloat16': 'bf16'}
TRAINING = ('auto', 'no', 'bf16', 'fp16')  # --mixed-precision: Accelerate's names

# what runs when a runtime is left to choose for the CPU it runs on
RUNTIME_DEFAULT = 'runtime default'
# the runtimes that choose a 16-bit precision themselves when left to their default; the others run fp32 only
_RUNTIMES_THAT_CHOOSE = {'openvino': "OpenVINO's default for the CPU it runs on: bf16 where the CPU has bf16 "
                                     'units (AMX or AVX512-BF16), f32 elsewhere'}
_OPENVINO_HINTS = {'fp32': 'f32', 'bf16': 'bf16', 'fp16': 'f16'}


def autocast(device_type: str, dtype: Optional[torch.dtype]):
    """torch's autocast to ``dtype`` on ``device_type``, or nothing for None (fp32): how every torch path
    applies a decided precision."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


def parse(value: str, flag: str = '--precision') -> str:
    """'auto', 'fp32' or 'bf16' for what a user typed (any case; OpenVINO's 'f32' and torch's 'float32' /
    'bfloat16' too); anything else is one sentence naming ``flag``."""
    text = str(value).strip().lower()
    canonical = _ALIASES.get(text, text)
    if canonical not in PRECISIONS:
        raise ConfigError(f'{flag} must be one of {", ".join(PRECISIONS)}, got {value!r}')
    return canonical


@dataclass(frozen=True)
class Precision:
    """What a model computes in (``compute``: 'fp32', 'bf16', 'fp16' or :data:`RUNTIME_DEFAULT`), where
    (``where``: 'cpu', 'cuda', a runtime's name), what was asked, and why."""
    compute: str
    where: str
    asked: str
    reason: str

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        """torch's autocast dtype (None: fp32, no autocast)."""
        return {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(self.compute)

    def autocast(self, device_type: Optional[str] = None):
        """The context a torch model runs in: autocast to :attr:`autocast_dtype` on ``device_type`` (default:
        where this precision was decided), or nothing."""
        return autocast(device_type or self.where, self.autocast_dtype)

    @property
    def openvino_hint(self) -> Optional[str]:
        """OpenVINO's INFERENCE_PRECISION_HINT ('f32', 'bf16'), or None for its own default."""
        return _OPENVINO_HINTS.get(self.compute)

    @property
    def mixed_precision(self) -> str:
        """Accelerate's ``mixed_precision``: 'no', 'bf16' or 'fp16'."""
        return {'bf16': 'bf16', 'fp16': 'fp16'}.get(self.compute, 'no')


def cpu_decision(work: Optional[ProbeWork] = None, training: bool = False) -> Tuple[str, str]:
    """('bf16' or 'fp32', why) for torch on this CPU: bf16 where it runs at least :data:`MARGIN` times fp32's
    speed, measured on ``work`` (the model about to run; cached per machine) or, without one, by the
    microarchitectures measured so far; fp32 on CPUs without bf16 instructions (emulated there)."""
    speedup = bf16_speedup(work) if work is not None else table_speedup(training)
    if speedup is None:
        return 'fp32', 'this CPU has no bf16 instructions (AMX-BF16 or AVX512-BF16)'
    if speedup.ratio >= MARGIN:
        return 'bf16', speedup.describe()
    return 'fp32', f'{speedup.describe()}, below the {MARGIN:g}x that bf16 must gain'


def cpu_reason(work: Optional[ProbeWork] = None, training: bool = False) -> str:
    """Why :func:`cpu_decision` answers as it does, in a few words (``fishzoo info`` prints it)."""
    return cpu_decision(work, training)[1]


def cpu_auto(work: Optional[ProbeWork] = None, training: bool = False) -> str:
    """What 'auto' computes in for torch on this CPU: 'bf16' or 'fp32'."""
    return cpu_decision(work, training)[0]


def _logged(decided: Precision, log: bool) -> Precision:
    if log:
        _logger.info('precision: %s on %s (%s)', decided.compute, decided.where, decided.reason)
    return decided


def _setting(flag: str, value: str) -> str:
    """How a user writes ``value`` for ``flag``: ``--precision fp32`` on a command line, ``precision='fp32'``
    in Python."""
    return f'{flag} {value}' if flag.startswith('-') else f"{flag}='{value}'"


def for_torch(asked: str = 'auto', device: Union[str, torch.device] = 'cpu', flag: str = '--precision',
              log: bool = True, work: Optional[ProbeWork] = None) -> Precision:
    """What torch inference on ``device`` computes in for ``asked`` ('auto', 'fp32', 'bf16'); ``work`` is the
    model about to run, which 'auto' on a CPU measures (:func:`cpu_decision`)."""
    asked = parse(asked, flag)
    where = torch.device(device).type
    if where == 'cpu':
        if asked != 'auto':
            return _logged(Precision(asked, where, asked, _setting(flag, asked)), log)
        chosen, why = cpu_decision(work)
        other = 'fp32' if chosen == 'bf16' else 'bf16'
        return _logged(Precision(chosen, where, asked, f'{why}; {_setting(flag, other)} overrides'), log)
    if where == 'cuda':
        if asked == 'fp32':
            return _logged(Precision('fp32', where, asked, _setting(flag, 'fp32')), log)
        # tensor cores want 16 bits; bf16 keeps fp32's range, fp16 is the fallback on GPUs before Ampere
        if asked == 'auto' and not torch.cuda.is_bf16_supported():
            return _logged(Precision('fp16', where, asked, 'this GPU has no bf16: fp16 autocast'), log)
        return _logged(Precision('bf16', where, asked, _setting(flag, 'bf16') if asked == 'bf16' else
                                 'CUDA: bf16 autocast'), log)
    if asked == 'bf16':
        raise ConfigError(f"{_setting(flag, 'bf16')} is for CPU and CUDA devices; on {where} use "
                          f"{_setting(flag, 'fp32')} or {_setting(flag, 'auto')}")
    return _logged(Precision('fp32', where, asked, f'{where}: fp32 (16-bit support varies)'), log)


def for_training(asked: Optional[str] = 'auto', device: Union[str, torch.device] = 'cpu',
                 flag: str = '--mixed-precision', log: bool = True,
                 work: Optional[ProbeWork] = None) -> Optional[Precision]:
    """What a training run's mixed precision is for ``asked`` ('auto', 'no', 'bf16', 'fp16'; Accelerate's
    names) on ``device``; None where Accelerate's own configuration decides.

    'auto' on the CPU follows :func:`cpu_decision` (``work``: the model's training step, measured), unless
    Accelerate's configuration asks for 16 bits (``ACCELERATE_MIXED_PRECISION``, which ``accelerate launch``
    sets from its config: 'no' is its default, so it does not count as a choice). On GPUs 'auto' leaves it to
    Accelerate's configuration."""
    asked = 'auto' if asked is None else str(asked).lower()
    if asked not in TRAINING:
        raise ConfigError(f'{flag} must be one of {", ".join(TRAINING)}, got {asked!r}')
    where = torch.device(device).type
    if asked != 'auto':
        return Precision({'no': 'fp32'}.get(asked, asked), where, asked, _setting(flag, asked))
    configured = os.environ.get('ACCELERATE_MIXED_PRECISION', 'no').lower()
    if where != 'cpu' or configured not in ('no', ''):
        return None
    chosen, why = cpu_decision(work, training=True)
    other = 'no' if chosen == 'bf16' else 'bf16'
    decided = Precision(chosen, where, asked, why)
    if log:
        _logger.info('mixed precision: %s on the CPU, as %s (%s overrides)',
                     'bf16 autocast' if chosen == 'bf16' else 'none (fp32)', decided.reason, _setting(flag, other))
    return decided


def for_runtime(asked: str, runtime: str, recorded: Optional[str] = None, flag: str = '--precision',
                runtime_name: Optional[str] = None, log: bool = True) -> Precision:
    """What ``runtime`` ('onnx', 'openvino', 'executorch', 'litert', ...) computes in for ``asked``.

    ``recorded`` is what an exported folder was made to run in (its export record's ``compute``); 'auto' keeps
    it. A runtime that chooses for the CPU itself (OpenVINO) computes in :data:`RUNTIME_DEFAULT` for 'auto';
    one that runs fp32 only refuses bf16 in one sentence (``runtime_name`` names it there)."""
    asked = parse(asked, flag)
    name = runtime_name or runtime
    chooses = _RUNTIMES_THAT_CHOOSE.get(runtime)
    if asked == 'bf16' and chooses is None:
        raise ConfigError(f'{_setting(flag, "bf16")} is for torch and OpenVINO: {name} runs fp32 models in fp32 on '
                          'the CPU')
    if asked != 'auto':
        return _logged(Precision(asked, runtime, asked, _setting(flag, asked)), log)
    recorded = from_record(recorded)
    if recorded is not None and recorded != RUNTIME_DEFAULT:
        return _logged(Precision(recorded, runtime, asked, f'exported to run in {recorded}'), log)
    if chooses is not None:
        return _logged(Precision(RUNTIME_DEFAULT, runtime, asked, chooses), log)
    return _logged(Precision('fp32', runtime, asked, f'{name} runs fp32'), log)


def from_record(value: Optional[str]) -> Optional[str]:
    """fishzoo's name for a precision an export record holds, written by this or an older fishzoo (OpenVINO's
    'f32', 'default')."""
    if value is None:
        return None
    if value in ('default', RUNTIME_DEFAULT):
        return RUNTIME_DEFAULT
    return {'f32': 'fp32', 'f16': 'fp16'}.get(value, value)


def runtime_default_reason(runtime: str) -> Optional[str]:
    """What a runtime that chooses for the CPU itself picks (None: it runs fp32 only)."""
    return _RUNTIMES_THAT_CHOOSE.get(runtime)
