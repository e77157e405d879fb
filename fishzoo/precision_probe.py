"""How much faster bf16 runs than fp32 for torch on this CPU, measured on the model's own work.

:mod:`fishzoo.precision` asks here when 'auto' has to choose between fp32 and bf16 on a CPU with bf16
instructions. A rule by CPU flag was a guess that two machines contradicted (an emulation predicted bf16 at
0.65x fp32 on AVX512-BF16; a real AMD EPYC ran it at 2.05x), so the answer is measured: the model (or a copy
of it for training) runs a few batches in fp32 and in bf16 autocast, interleaved, and the faster one wins by
a margin. The figure is cached per CPU, thread count, library versions and model shape, so the probe runs
once per machine and model; ``FISHZOO_PRECISION_PROBE=off`` uses :data:`MEASURED` (the microarchitectures
measured so far) instead, and ``fishzoo info`` prints both.
"""
import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn as nn

from fishzoo.cpu_features import CpuFeatures, cpu_features

_logger = logging.getLogger(__name__)

PROBE_ENV = 'FISHZOO_PRECISION_PROBE'  # 'off': decide by MEASURED alone
CACHE_ENV = 'FISHZOO_CACHE'  # the folder of the probe's cache (default ~/.cache/fishzoo)
MARGIN = 1.15  # bf16 must be this much faster: a closer result is noise, and fp32 is exact
PROBE_VERSION = 1

# bf16 autocast / fp32 speed, measured with fishzoo on real hardware (docs/performance.md); used where the
# probe is off and as the reason when the CPU has no bf16 instructions at all
MEASURED = {
    'amx': dict(inference=3.8, training=2.5,
                where='Intel Xeon with AMX-BF16: FishNet-150, optimize_for_inference b8 and an SGD step, 224 px'),
    'avx512_bf16': dict(inference=2.05, training=1.86,
                        where='AMD EPYC with AVX512-BF16, no AMX: FishNet-150, b8 inference and b16 SGD step, '
                              '224 px'),
}


def microarchitecture(features: CpuFeatures) -> Optional[str]:
    """The :data:`MEASURED` row for this CPU; None where it has no bf16 instructions (bf16 is emulated)."""
    if features.amx_bf16:
        return 'amx'
    if features.avx512_bf16:
        return 'avx512_bf16'
    return None


@dataclass(frozen=True)
class Speedup:
    """bf16's speed over fp32 (``ratio``), and where the figure comes from: 'measured' now, 'cached' from an
    earlier probe on this machine, or 'table' (:data:`MEASURED`)."""
    ratio: float
    source: str
    detail: str

    def describe(self) -> str:
        return f'bf16 {self.ratio:.2f}x fp32 ({self.source}: {self.detail})'


@dataclass(frozen=True)
class ProbeWork:
    """What to measure: ``model`` on ``batch`` random inputs of ``input_size`` (C, H, W); ``training`` runs
    a forward and backward pass on a copy (the model's weights are never touched)."""
    model: nn.Module
    input_size: Tuple[int, int, int]
    batch: int = 8
    training: bool = False

    def key(self) -> str:
        """What the figure depends on: the model's layers and shapes, the input, the mode."""
        shapes = ';'.join(f'{type(m).__name__}' for m in self.model.modules())
        params = ';'.join(str(tuple(p.shape)) for p in self.model.parameters())
        digest = hashlib.sha256((shapes + '|' + params).encode()).hexdigest()[:16]
        return f'{digest}|{self.batch}x{"x".join(map(str, self.input_size))}|{"train" if self.training else "eval"}'


def table_speedup(training: bool = False, features: Optional[CpuFeatures] = None) -> Optional[Speedup]:
    row = microarchitecture(features or cpu_features())
    if row is None:
        return None
    entry = MEASURED[row]
    return Speedup(entry['training' if training else 'inference'], 'table', entry['where'])


def cpu_key() -> str:
    """What a measured figure depends on besides the work: the CPU, its features, threads, torch."""
    model_name = ''
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                model_name = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    import platform
    return (f'{model_name or platform.processor() or platform.machine()}|{cpu_features().summary()}|'
            f'threads {torch.get_num_threads()}|torch {torch.__version__}|probe {PROBE_VERSION}')


def cache_path(name: str = 'precision-probe.json') -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser('~'), '.cache', 'fishzoo')
    return Path(root) / name


def read_cache(name: str = 'precision-probe.json') -> dict:
    try:
        data = json.loads(cache_path(name).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_cache(key: str, value: dict, name: str = 'precision-probe.json') -> None:
    """Best effort: a read-only home only means the probe runs again next time."""
    from fishzoo.hub.atomic import write_file
    data = read_cache(name)
    data[key] = value
    try:
        cache_path(name).parent.mkdir(parents=True, exist_ok=True)
        write_file(cache_path(name), json.dumps(data, indent=1))
    except OSError as e:
        _logger.debug('%s: cache not written (%s)', name, e)


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(work: ProbeWork, rounds: int = 3) -> Tuple[float, float]:
    """(fp32 seconds, bf16 seconds) for one batch of ``work``: the best of ``rounds``, fp32 and bf16
    interleaved so that a neighbour's load falls on both."""
    model = copy.deepcopy(work.model).float()
    model.train(work.training)
    for p in model.parameters():
        p.requires_grad_(work.training)
    x = torch.randn(work.batch, *work.input_size)

    def step(dtype):
        def run():
            with torch.autocast('cpu', dtype=dtype, enabled=dtype is not None):
                if work.training:
                    model(x).float().mean().backward()
                    model.zero_grad(set_to_none=True)
                else:
                    with torch.no_grad():
                        model(x)
        return run

    fp32, bf16 = step(None), step(torch.bfloat16)
    fp32()
    bf16()  # first calls: oneDNN builds its kernels
    fp32_s = bf16_s = float('inf')
    for _ in range(rounds):
        fp32_s, bf16_s = min(fp32_s, _seconds(fp32)), min(bf16_s, _seconds(bf16))
    return fp32_s, bf16_s


def probes_on() -> bool:
    """Measuring is allowed: ``FISHZOO_PRECISION_PROBE`` is not 'off' (it also turns off the fast path's choice
    of runtime, :mod:`fishzoo.deploy.backend_choice`)."""
    return os.environ.get(PROBE_ENV, '').strip().lower() not in ('off', '0', 'no')


def probe_runs() -> bool:
    """A model given to :func:`bf16_speedup` is measured: the CPU has bf16 instructions and the probe is not
    off. Callers that must build a model only for the probe ask this first."""
    return table_speedup() is not None and probes_on()


def bf16_speedup(work: Optional[ProbeWork] = None) -> Optional[Speedup]:
    """bf16's speed over fp32 on this CPU for ``work``: measured once (then cached), or the :data:`MEASURED`
    table's figure where no work is given or the probe is off; None where the CPU has no bf16 instructions
    (nothing to measure: bf16 is emulated there, and slow)."""
    training = bool(work and work.training)
    table = table_speedup(training)
    if work is None or not probe_runs():
        return table
    cpu, what_key = cpu_key(), work.key()
    key = f'{cpu}|{what_key}'
    cached = read_cache().get(key)
    if isinstance(cached, dict) and cached.get('fp32_s') and cached.get('bf16_s'):
        return Speedup(cached['fp32_s'] / cached['bf16_s'], 'cached',
                       f"measured on this machine {cached.get('when', '')}".strip())
    start = time.perf_counter()
    try:
        fp32_s, bf16_s = measure(work, rounds=2 if training else 3)  # a training step is the longer probe
    except Exception as e:  # a model the probe cannot run as given: the table stands
        _logger.info('precision probe: could not measure (%s); using the measured table', e)
        return table
    write_cache(key, dict(fp32_s=fp32_s, bf16_s=bf16_s, when=time.strftime('%Y-%m-%d'),
                           work=what_key, cpu=cpu))
    what = 'a training step' if training else 'inference'
    return Speedup(fp32_s / bf16_s, 'measured',
                   f'{what} at {work.batch}x{"x".join(map(str, work.input_size))}: fp32 {fp32_s * 1e3:.0f} ms, '
                   f'bf16 {bf16_s * 1e3:.0f} ms, probe {time.perf_counter() - start:.1f} s')


__all__ = ['MARGIN', 'MEASURED', 'ProbeWork', 'Speedup', 'bf16_speedup', 'cpu_key', 'measure', 'probe_runs',
           'probes_on', 'read_cache', 'table_speedup', 'write_cache']
