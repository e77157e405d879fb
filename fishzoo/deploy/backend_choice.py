"""Which runtime ``optimize_for_inference`` runs a model in on the CPU: torch (inductor) or OpenVINO, measured.

Neither wins everywhere: on an AMD EPYC with AVX512-BF16 OpenVINO ran the dual MobileNetV2 1.12x faster than
the compiled torch model (it fuses Mish into its convolutions), and FishNet-150 at the same speed
(``benchmarks/precision_choice.py``). So where OpenVINO is installed (``fishzoo[deploy]``), the first call
for a model on a machine converts it, checks it against PyTorch, times both at the probe's batch, and keeps
the faster, OpenVINO only where it is :data:`MARGIN` faster (torch is the exact, familiar path). The figures
are cached next to the precision probe's (per CPU, threads, torch version, model shape and precision), so
later calls build only the winner; ``FISHZOO_PRECISION_PROBE=off`` keeps torch without measuring.
"""
import importlib.util
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn

from fishzoo.errors import ConfigError, FishzooError
from fishzoo.precision_probe import ProbeWork, cpu_key, probes_on, read_cache, write_cache

_logger = logging.getLogger(__name__)

CACHE_FILE = 'backend-choice.json'
MARGIN = 1.05
BACKENDS = ('auto', 'torch', 'openvino')
CHOICE_VERSION = 1


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # 'torch' | 'openvino'
    reason: str


def openvino_installed() -> bool:
    return importlib.util.find_spec('openvino') is not None


def measuring() -> bool:
    """'auto' compares runtimes here: OpenVINO is installed and measuring is not turned off."""
    return openvino_installed() and probes_on()


def openvino_run(model: nn.Module, input_size: Tuple[int, int, int], precision: str) -> Callable:
    """The model converted to OpenVINO and compiled to compute in ``precision``, checked against PyTorch."""
    from fishzoo.deploy import openvino as ov_format
    from fishzoo.deploy.runner import check_against_torch, require
    from fishzoo.precision import for_runtime
    require('openvino', 'deploy', "backend='openvino'", ConfigError)
    run = ov_format.runner(ov_format.export_openvino(model, input_size),
                           for_runtime(precision, 'openvino', flag='precision', log=False))
    check_against_torch(run, model, [(2, *input_size)], ov_format.TOLERANCE.get(run.precision, 0.15),
                        f'OpenVINO ({run.precision})')
    return run


def _rate(run: Callable, x: torch.Tensor, seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        run(x)
        calls += 1
    return calls * x.shape[0] / (time.perf_counter() - start)


def compare(torch_run: Callable, openvino_run: Callable, work: ProbeWork, rounds: int = 2,
            seconds: float = 0.75) -> dict:
    """``torch_img_s`` and ``openvino_img_s`` on ``work``'s batch of random images (the best of ``rounds``,
    interleaved), and ``torch_start_s``: the first torch call, where it compiles (not timed in the rates)."""
    x = torch.randn(work.batch, *work.input_size)
    start = time.perf_counter()
    torch_run(x)
    torch_start = time.perf_counter() - start
    for run in (torch_run, openvino_run, openvino_run):
        run(x)
    torch_best = openvino_best = 0.0
    for _ in range(rounds):
        torch_best = max(torch_best, _rate(torch_run, x, seconds))
        openvino_best = max(openvino_best, _rate(openvino_run, x, seconds))
    return dict(torch_img_s=torch_best, openvino_img_s=openvino_best, torch_start_s=torch_start)


def _key(work: ProbeWork, precision: str) -> str:
    return f'{cpu_key()}|{work.key()}|{precision}|choice {CHOICE_VERSION}'


def cached_figures(work: ProbeWork, precision: str) -> Optional[dict]:
    """What an earlier choice measured for ``work`` on this machine: ``backend``, ``torch_img_s``,
    ``openvino_img_s`` and the seconds each took to be ready (``torch_start_s``: compiling; ``openvino_start_s``:
    converting and checking); None where nothing was measured."""
    cached = read_cache(CACHE_FILE).get(_key(work, precision))
    return cached if _is_choice(cached) else None


def _is_choice(cached) -> bool:
    return isinstance(cached, dict) and cached.get('backend') in ('torch', 'openvino')


def choose(work: ProbeWork, precision: str, torch_run: Callable,
           build_openvino: Callable[[], Callable]) -> tuple:
    """(:class:`BackendChoice`, the OpenVINO run or None): cached for this machine and ``work``, else measured.
    ``build_openvino`` converts and checks the model (raising :class:`FishzooError` where it cannot)."""
    def unavailable(error: FishzooError) -> tuple:
        return BackendChoice('torch', f'OpenVINO could not run it ({str(error)[:200]})'), None

    key = _key(work, precision)
    cached = read_cache(CACHE_FILE).get(key)
    if _is_choice(cached):
        reason = (f"cached: torch {cached.get('torch_img_s')} img/s, OpenVINO {cached.get('openvino_img_s')} img/s "
                  f"on this machine {cached.get('when', '')}").strip()
        if cached['backend'] == 'torch':
            return BackendChoice('torch', reason), None
        try:
            return BackendChoice('openvino', reason), build_openvino()
        except FishzooError as e:
            return unavailable(e)
    start = time.perf_counter()
    try:
        openvino_run = build_openvino()
    except FishzooError as e:
        # not cached: a conversion that fails now (a model OpenVINO cannot trace) is tried again next time
        return unavailable(e)
    openvino_start = time.perf_counter() - start
    measured = compare(torch_run, openvino_run, work)
    torch_rate, openvino_rate = measured['torch_img_s'], measured['openvino_img_s']
    backend = 'openvino' if openvino_rate >= MARGIN * torch_rate else 'torch'
    write_cache(key, dict(backend=backend, torch_img_s=round(torch_rate, 1), openvino_img_s=round(openvino_rate, 1),
                          torch_start_s=round(measured['torch_start_s'], 1), openvino_start_s=round(openvino_start, 1),
                          when=time.strftime('%Y-%m-%d')), CACHE_FILE)
    reason = (f'measured at {work.batch}x{"x".join(map(str, work.input_size))}: torch {torch_rate:.1f} img/s, '
              f'OpenVINO ({getattr(openvino_run, "precision", "?")}) {openvino_rate:.1f} img/s, '
              f'{time.perf_counter() - start:.0f} s; OpenVINO needs {MARGIN}x')
    return BackendChoice(backend, reason), (openvino_run if backend == 'openvino' else None)


__all__ = ['BACKENDS', 'MARGIN', 'BackendChoice', 'cached_figures', 'choose', 'compare', 'measuring',
           'openvino_installed', 'openvino_run']
