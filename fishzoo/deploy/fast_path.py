"""``optimize_for_inference``: one call to the fastest inference form of a model on this machine.

On the CPU: BatchNorm folded into the preceding convolutions (timm's ``reparameterize_model``, which calls
the blocks' ``reparameterize()``), Mish in the form inductor compiles fast (:class:`CompiledMish`),
channels_last, and ``torch.compile`` by inductor with *freezing*
(weights become constants, so inductor pre-packs them for oneDNN and fuses the remaining BatchNorm,
ReLU and residual adds into the convolutions) and its C++ wrapper. Freezing is an inductor *config*
setting read when the graph is compiled, i.e. at the first call and at every recompilation:
``torch.compile(options={'freezing': True})`` does not reach it (measured: no weight is packed), so the
config is patched around each call instead. The precision is :mod:`fishzoo.precision`'s (``'auto'``: bf16
autocast where the CPU's bf16 units pay, fp32 elsewhere; on CUDA bf16, fp16 where bf16 is not supported).
On CUDA: channels_last, the autocast and the same compile. Where compilation is unavailable or fails (no C++
compiler, an unsupported platform), the folded eager model runs instead, with one warning. Outputs are fp32
either way. Where OpenVINO is installed and runs the model measurably faster on this CPU, the one call runs it
there instead (:mod:`fishzoo.deploy.backend_choice`), torch tensors in and out.

``select_fast_path`` holds the device decisions, so they are tested on machines without the device.
"""
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

from fishzoo.deploy import backend_choice
from fishzoo.deploy.backend_choice import BACKENDS
from fishzoo.errors import ConfigError, describe
from fishzoo.precision import autocast, for_torch
from fishzoo.precision_probe import ProbeWork

_logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_retaining = False


def retain_freed_memory() -> bool:
    """Keep the memory freed tensors leave behind inside the process (glibc only; process-wide, idempotent).

    glibc hands big blocks (activations of a few MB and more) back to the kernel when they are freed, so
    every forward pass faults all of its activation pages in again; on a virtual machine each fresh page
    is a trip to the hypervisor. Serving them from the heap instead and never trimming it makes eager
    FishNets faster on the virtual machines this project is benchmarked on (``benchmarks/peers.py`` measures it).
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


class CompiledMish(nn.Module):
    """Mish, ``x * tanh(softplus(x))``, in the form inductor compiles fast; aten's kernel when run eagerly.

    Inductor's lowering of ``F.mish`` computes exp, log1p and tanh per element, and those three vectorized
    transcendental functions were 40% of the compiled dual MobileNetV2 in bf16 (18.9 img/s; 30.1 with this
    form, 34.6 with ReLU in its place, AMD EPYC, b8). With ``n = e^x (e^x + 2)``, ``tanh(log(1 + e^x))`` is
    exactly ``n / (n + 2)``: one exp and one division (within 1e-6 of aten's in fp32; x is clamped at 20
    before the exp, where the ratio is already 1). Eagerly the formula's six passes over memory are slower
    than aten's one kernel, so the eager fallback keeps aten's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return nn.functional.mish(x)
        e = torch.exp(x.clamp(max=20.0))
        n = e * (e + 2)
        return x * (n / (n + 2))


def compile_friendly_activations(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Mish`` replaced by :class:`CompiledMish` (in place; returns the model)."""
    for name, child in model.named_children():
        if type(child) is nn.Mish:
            setattr(model, name, CompiledMish())
        else:
            compile_friendly_activations(child)
    return model


def _cpu_compiler_available() -> bool:
    return bool(os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++') or shutil.which('clang++'))


@dataclass(frozen=True)
class FastPath:
    """How a model runs fastest on one device (what ``optimize_for_inference`` and the benchmark apply)."""
    device: str
    precision: str  # 'fp32' | 'bf16' | 'fp16': what the convolutions compute in (fishzoo.precision decides)
    channels_last: bool
    autocast_dtype: Optional[torch.dtype]
    compile: bool
    freezing: bool
    cpp_wrapper: bool
    retain_freed_memory: bool

    def autocast(self):
        """The context the model runs in: autocast to ``autocast_dtype``, or nothing."""
        return autocast(self.device, self.autocast_dtype)

    def inductor_config(self, **overrides):
        """Inductor's settings for this path, as a context around compiled calls (they compile lazily)."""
        import torch._inductor.config as inductor_config
        return inductor_config.patch({'freezing': self.freezing, 'cpp_wrapper': self.cpp_wrapper, **overrides})


def select_fast_path(device: Union[str, torch.device] = 'cpu', compile: bool = True,
                     precision: str = 'auto', log: bool = False, work: Optional[ProbeWork] = None) -> FastPath:
    """The fast-path settings for ``device`` and ``precision`` ('auto', 'fp32' or 'bf16', decided by
    :func:`fishzoo.precision.for_torch`, logged with ``log``); reads device capabilities (CPU features, CUDA's
    bf16 support) but allocates nothing on the device; with ``work`` (the model), 'auto' on a CPU is measured
    (:func:`fishzoo.precision.cpu_decision`)."""
    device = torch.device(device)
    decided = for_torch(precision, device, flag='precision', log=log, work=work)
    chosen = dict(precision=decided.compute, autocast_dtype=decided.autocast_dtype)
    if device.type == 'cuda':
        # Tensor cores want channels_last; the C++ wrapper only pays off where Python overhead is the cost (CPU)
        return FastPath('cuda', **chosen, channels_last=True, compile=compile, freezing=True, cpp_wrapper=False,
                        retain_freed_memory=False)
    if device.type == 'cpu':
        compiles = compile and _cpu_compiler_available()
        return FastPath('cpu', **chosen, channels_last=True, compile=compiles, freezing=True, cpp_wrapper=compiles,
                        retain_freed_memory=True)
    # mps, xpu and others: layout and compile support vary, so only the folding is applied
    return FastPath(device.type, **chosen, channels_last=False, compile=False, freezing=False, cpp_wrapper=False,
                    retain_freed_memory=False)


class InferenceModel(nn.Module):
    """A folded model, compiled when possible; falls back to eager on the first compile failure."""

    def __init__(self, model: nn.Module, fast_path: FastPath, compiled=None):
        super().__init__()
        self.model = model
        self.fast_path = fast_path
        self._compiled = compiled

    @property
    def backend(self) -> str:
        """What runs the model: 'torch' here, 'openvino' in :class:`OpenVinoInference`."""
        return 'torch'

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
        return (f'backend={self.backend}, precision={self.precision}, compiled={self.compiled}, '
                f'channels_last={self.channels_last}')

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
        backend: str = 'auto',
        batch_size: int = 8,
) -> InferenceModel:
    """The model (a deep copy) in eval mode with BN folded, in the device's fastest layout and precision,
    compiled.

    ``precision``: 'auto' (bf16 where this CPU measurably runs the model faster in it, once per machine and
    model, and on CUDA; fp32 elsewhere), 'fp32' (exact: the
    eager model's numbers to about 1e-6) or 'bf16'; the choice is logged and is the returned model's
    ``.precision``. ``device`` defaults to the model's; ``channels_last`` and ``retain_memory`` (see
    ``retain_freed_memory``) default to what ``select_fast_path`` chooses for it.

    ``backend``: 'auto' (on a CPU where OpenVINO is installed, whichever of the compiled torch model and
    OpenVINO runs this model faster, measured once per machine and model: :mod:`fishzoo.deploy.backend_choice`;
    torch elsewhere), 'torch' or 'openvino'. Tensors in and out either way; the returned model's ``.backend``
    says which runs. ``batch_size``: the batch the model will mostly run at; the precision probe and the choice of
    runtime measure at it (a compiled torch model then has that shape compiled already).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else 'cpu'
    on_cpu = torch.device(device).type == 'cpu'
    if backend == 'openvino' and not on_cpu:
        raise ConfigError(f"backend='openvino' runs on the CPU; the model is on {torch.device(device)}")
    cfg = getattr(model, 'pretrained_cfg', None)
    input_size = tuple(cfg.get('input_size', (3, 224, 224))) if cfg else (_input_channels(model) or 3, 224, 224)
    work = ProbeWork(model.eval(), input_size, batch=batch_size) if on_cpu and cfg else None
    fast_path = select_fast_path(device, compile=compile, precision=precision, log=True, work=work)
    if channels_last is not None:
        fast_path = replace(fast_path, channels_last=channels_last)
    elif fast_path.compile and _input_channels(model) == 1:
        # with a one-channel input (the grayscale digits models) inductor's graph for a second, dynamic batch
        # size expected the stem convolution's output channels_last and got it NCHW ("expected stride
        # 1==1024"), so the compiled model fell back to eager; in NCHW it compiles and stays compiled
        # (test_grayscale_model_stays_compiled_across_batch_sizes guards it)
        fast_path = replace(fast_path, channels_last=False)
    if retain_memory if retain_memory is not None else fast_path.retain_freed_memory:
        retain_freed_memory()
    folded = reparameterize_model(model.eval(), inplace=False).eval().to(fast_path.device)
    if fast_path.compile:
        compile_friendly_activations(folded)
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
    torch_model = InferenceModel(folded, fast_path, compiled)
    if backend == 'torch' or not on_cpu:
        return torch_model

    def build_openvino():
        return backend_choice.openvino_run(model, input_size, fast_path.precision)
    if backend == 'openvino':
        return OpenVinoInference(folded, fast_path, build_openvino(), 'asked for')
    if work is None or compiled is None or not backend_choice.measuring():
        return torch_model
    choice, openvino_run = backend_choice.choose(work, fast_path.precision, torch_model, build_openvino)
    _logger.info('runtime: %s (%s)', choice.backend, choice.reason)
    if openvino_run is None:
        return torch_model
    return OpenVinoInference(folded, fast_path, openvino_run, choice.reason)


class OpenVinoInference(InferenceModel):
    """The model run by OpenVINO (what ``optimize_for_inference`` returns where OpenVINO measured faster):
    torch tensors in and out, fp32 logits; ``model`` is the folded torch model it was converted from."""

    def __init__(self, model: nn.Module, fast_path: FastPath, run, reason: str):
        super().__init__(model, fast_path, None)
        self._openvino = run
        self.reason = reason

    @property
    def backend(self) -> str:
        return 'openvino'

    @property
    def compiled(self) -> bool:
        return True

    @property
    def precision(self) -> str:
        return self._openvino.precision

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._openvino(x.detach().cpu().numpy())).to(x.device)


def _input_channels(model: nn.Module) -> Optional[int]:
    chans = getattr(model, 'in_chans', None)
    if chans is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        chans = conv.in_channels if conv is not None else None
    return chans
