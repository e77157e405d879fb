"""``optimize_for_inference``: one call to the fastest inference form of a model on this machine.

On the CPU: BatchNorm folded into the preceding convolutions (timm's ``reparameterize_model``, which calls
the blocks' ``reparameterize()``), channels_last, and ``torch.compile`` by inductor with *freezing*
(weights become constants, so inductor pre-packs them for oneDNN and fuses the remaining BatchNorm,
ReLU and residual adds into the convolutions) and its C++ wrapper. Freezing is an inductor *config*
setting read when the graph is compiled, i.e. at the first call and at every recompilation:
``torch.compile(options={'freezing': True})`` does not reach it (measured: no weight is packed), so the
config is patched around each call instead. ``precision='auto'`` runs in bf16 autocast where the CPU has
AMX-BF16 (4x the fp32 img/s on FishNet-150, logits within about 1%; :mod:`fishzoo.cpu_features`) and in
fp32 elsewhere, where bf16 convolutions are slower. On CUDA: channels_last, bf16 autocast (fp16 where bf16
is not supported) and the same compile. Where compilation is unavailable or fails (no C++ compiler, an
unsupported platform), the folded eager model runs instead, with one warning. Outputs are fp32 either way.

``select_fast_path`` holds the device decisions, so they are tested on machines without the device.
"""
import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, replace
from typing import Optional, Union

import torch
import torch.nn as nn
from timm.models import reparameterize_model

from fishzoo.cpu_features import check_precision, cpu_features, resolve_precision
from fishzoo.errors import ConfigError, describe

_logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_retaining = False


def retain_freed_memory() -> bool:
    """Keep the memory freed tensors leave behind inside the process (glibc only; process-wide, idempotent).

    glibc hands big blocks (activations of a few MB and more) back to the kernel when they are freed, so
    every forward pass faults all of its activation pages in again; on a virtual machine each fresh page
    is a trip to the hypervisor. Serving them from the heap instead and never trimming it measured +15-20%
    eager FishNet-150 throughput on the 2-core VM this project is benchmarked on (``benchmarks/peers.py``).
    The price: the process keeps its peak memory until it exits. Returns whether the setting is in effect.
    """
    global _retaining
    if _retaining:
        return True
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    _retaining = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    if _retaining:
        _logger.info('glibc malloc: freed memory is kept in the process (fishzoo.deploy.fast_path.retain_freed_memory)')
    return _retaining


def _cpu_compiler_available() -> bool:
    return bool(os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++') or shutil.which('clang++'))


@dataclass(frozen=True)
class FastPath:
    """How a model runs fastest on one device (what ``optimize_for_inference`` and the benchmark apply)."""
    device: str
    precision: str  # 'fp32' | 'bf16' | 'fp16': what the convolutions compute in
    channels_last: bool
    autocast_dtype: Optional[torch.dtype]
    compile: bool
    freezing: bool
    cpp_wrapper: bool
    retain_freed_memory: bool

    def autocast(self):
        """The context the model runs in: autocast to ``autocast_dtype``, or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.autocast_dtype)

    def inductor_config(self, **overrides):
        """Inductor's settings for this path, as a context around compiled calls (they compile lazily)."""
        import torch._inductor.config as inductor_config
        return inductor_config.patch({'freezing': self.freezing, 'cpp_wrapper': self.cpp_wrapper, **overrides})


def select_fast_path(device: Union[str, torch.device] = 'cpu', compile: bool = True,
                     precision: str = 'auto') -> FastPath:
    """The fast-path settings for ``device`` and ``precision`` ('auto', 'fp32' or 'bf16'); reads device
    capabilities (CPU features, CUDA's bf16 support) but allocates nothing on the device."""
    device = torch.device(device)
    check_precision(precision)
    if device.type == 'cuda':
        # Tensor cores want channels_last and 16-bit inputs; bf16 keeps fp32's range, fp16 is the fallback
        # on GPUs older than Ampere. The C++ wrapper only pays off where Python overhead is the cost (CPU).
        dtype = None if precision == 'fp32' else \
            torch.bfloat16 if precision == 'bf16' or torch.cuda.is_bf16_supported() else torch.float16
        return FastPath('cuda', _precision_name(dtype), channels_last=True, autocast_dtype=dtype, compile=compile,
                        freezing=True, cpp_wrapper=False, retain_freed_memory=False)
    if device.type == 'cpu':
        compiles = compile and _cpu_compiler_available()
        # bf16 only where the CPU has AMX-BF16: elsewhere bf16 convolutions are slower than fp32
        dtype = torch.bfloat16 if resolve_precision(precision) == 'bf16' else None
        return FastPath('cpu', _precision_name(dtype), channels_last=True, autocast_dtype=dtype, compile=compiles,
                        freezing=True, cpp_wrapper=compiles, retain_freed_memory=True)
    if precision == 'bf16':
        raise ConfigError(f"precision='bf16' is for CPU and CUDA devices; on {device.type} use 'fp32' or 'auto'")
    # mps, xpu and others: layout and compile support vary, so only the folding is applied
    return FastPath(device.type, 'fp32', channels_last=False, autocast_dtype=None, compile=False, freezing=False,
                    cpp_wrapper=False, retain_freed_memory=False)


def _precision_name(dtype: Optional[torch.dtype]) -> str:
    return {None: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}[dtype]


class InferenceModel(nn.Module):
    """A folded model, compiled when possible; falls back to eager on the first compile failure."""

    def __init__(self, model: nn.Module, fast_path: FastPath, compiled=None):
        super().__init__()
        self.model = model
        self.fast_path = fast_path
        self._compiled = compiled

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    @property
    def channels_last(self) -> bool:
        return self.fast_path.channels_last

    @property
    def precision(self) -> str:
        """What the convolutions compute in: 'fp32', 'bf16' or 'fp16' (outputs are fp32 either way)."""
        return self.fast_path.precision

    def extra_repr(self) -> str:
        return f'precision={self.precision}, compiled={self.compiled}, channels_last={self.channels_last}'

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run(x)
        # autocast hands back 16-bit logits; callers compare and threshold them as fp32
        return out.float() if self.fast_path.autocast_dtype is not None and out.is_floating_point() else out

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_path.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.fast_path.autocast():
            if self._compiled is not None:
                try:
                    with self.fast_path.inductor_config():
                        return self._compiled(x)
                except Exception as e:  # compilation happens at the first call; any failure -> eager
                    warnings.warn(f'torch.compile failed ({describe(e, 200)}); '
                                  'running the folded model eagerly', RuntimeWarning, stacklevel=2)
                    self._compiled = None
            return self.model(x)


def optimize_for_inference(
        model: nn.Module,
        channels_last: Optional[bool] = None,
        compile: bool = True,
        device: Union[str, torch.device, None] = None,
        retain_memory: Optional[bool] = None,
        precision: str = 'auto',
) -> InferenceModel:
    """The model (a deep copy) in eval mode with BN folded, in the device's fastest layout and precision,
    compiled.

    ``precision``: 'auto' (bf16 on CPUs with AMX-BF16 and on CUDA, fp32 elsewhere), 'fp32' (exact: the
    eager model's numbers to about 1e-6) or 'bf16'; the choice is logged and is the returned model's
    ``.precision``. ``device`` defaults to the model's; ``channels_last`` and ``retain_memory`` (see
    ``retain_freed_memory``) default to what ``select_fast_path`` chooses for it.
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else 'cpu'
    fast_path = select_fast_path(device, compile=compile, precision=precision)
    _logger.info('optimize_for_inference: %s on %s%s', fast_path.precision, fast_path.device,
                 _why(fast_path, precision))
    if channels_last is not None:
        fast_path = replace(fast_path, channels_last=channels_last)
    elif fast_path.compile and _input_channels(model) == 1:
        # torch 2.14: with a one-channel input (the grayscale digits models) inductor's graph for a second,
        # dynamic batch size expects the stem convolution's output channels_last and gets it NCHW ("expected
        # stride 1==1024"), so the compiled model fell back to eager; in NCHW it compiles and stays compiled
        fast_path = replace(fast_path, channels_last=False)
    if retain_memory if retain_memory is not None else fast_path.retain_freed_memory:
        retain_freed_memory()
    folded = reparameterize_model(model.eval(), inplace=False).eval().to(fast_path.device)
    for p in folded.parameters():
        p.requires_grad_(False)
    if fast_path.channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    compiled = None
    if fast_path.compile:
        try:
            compiled = torch.compile(folded)
        except Exception as e:
            warnings.warn(f'torch.compile unavailable ({type(e).__name__}: {e}); running the folded model eagerly',
                          RuntimeWarning, stacklevel=2)
    return InferenceModel(folded, fast_path, compiled)


def _input_channels(model: nn.Module) -> Optional[int]:
    chans = getattr(model, 'in_chans', None)
    if chans is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        chans = conv.in_channels if conv is not None else None
    return chans


def _why(fast_path: FastPath, precision: str) -> str:
    if precision != 'auto':
        return f' (precision={precision!r})'
    if fast_path.device == 'cpu':
        other = 'fp32' if fast_path.precision == 'bf16' else 'bf16'
        return f" ({cpu_features().why()}; precision='{other}' overrides)"
    return ''
