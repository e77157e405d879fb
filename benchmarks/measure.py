"""How the benchmarks measure: timing in interleaved rounds, peak memory, saved activations, conv share.

Every case (a model, an implementation, an execution path) is built and warmed up first (compilation
included); then the cases run in rounds, each case for at least ``min_seconds`` per round, so drift of
the machine (another tenant, thermal state) lands on all of them alike. A case's throughput is the
median over rounds; ratios are taken between medians of the same run.

Memory: on the CPU the peak resident set of one call/step above the process's resident set just before
it (Linux's VmHWM, reset through /proc/self/clear_refs after giving freed memory back with
malloc_trim); on CUDA ``max_memory_allocated`` above the allocation before it. Either way it is what the
call itself needs on top of the weights (and, for training, the optimizer state), which is what
differs between implementations. Activation memory (for gradient checkpointing) is the bytes of
distinct non-parameter tensors autograd saves for the backward pass.
"""
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from fishzoo.deploy.fast_path import FastPath

MB = 2 ** 20
README_START, README_END = '<!-- benchmark:start -->', '<!-- benchmark:end -->'


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- device: synchronisation and peak memory ------------------------------------------------------------

def _proc_status_bytes(key: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_cpu_peak() -> Optional[int]:
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets VmHWM to the current resident set
    except OSError:
        return None
    return _proc_status_bytes('VmRSS')


@dataclass
class DeviceTools:
    device: torch.device
    sync: Callable[[], None]
    reset_peak: Callable[[], Optional[int]]  # -> baseline (None: peak memory cannot be measured here)
    peak_since: Callable[[int], int]


def device_tools(device) -> DeviceTools:
    device = torch.device(device)
    if device.type == 'cuda':
        def reset_cuda():
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.memory_allocated(device)
        return DeviceTools(device, lambda: torch.cuda.synchronize(device), reset_cuda,
                           lambda base: torch.cuda.max_memory_allocated(device) - base)
    return DeviceTools(device, lambda: None, _reset_cpu_peak,
                       lambda base: _proc_status_bytes('VmHWM') - base)


def default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def saved_activation_bytes(model: nn.Module, fn: Callable[[], Any]) -> int:
    """Bytes of distinct non-parameter tensors autograd saves for the backward pass while running fn()."""
    params = {p.data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


# --- cases and their timing ----------------------------------------------------------------------------

@dataclass
class Case:
    section: str  # 'roofline' | 'inference' | 'training'
    model: str
    impl: str  # 'fishzoo' | 'pytorchcv' | 'timm' | 'onnxruntime' | 'torch'
    path: str
    batch: int
    img_size: int
    gmacs: float  # per image, forward (roofline: per call)
    step: Callable[[], Any] = field(repr=False)
    setup_seconds: float = 0.0
    samples: List[float] = field(default_factory=list)  # images (calls) per second, one per round
    peak_mb: Optional[float] = None
    module: Optional[nn.Module] = field(default=None, repr=False)  # what step() runs, where it matters later

    @property
    def key(self) -> str:
        return f'{self.section}/{self.model}/{self.impl}/{self.path}'

    @property
    def per_second(self) -> float:
        return statistics.median(self.samples) if self.samples else float('nan')

    @property
    def gflops(self) -> float:
        factor = 3 if self.section == 'training' else 1  # backward ~ 2x forward
        return self.per_second * 2 * self.gmacs * factor

    def as_dict(self) -> Dict:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in ('step', 'module')}
        d.update(key=self.key, per_second=self.per_second, gflops=self.gflops)
        return d


def timed_setup(build: Callable[[], Callable[[], Any]], warmup: int, sync) -> Tuple[Callable[[], Any], float]:
    """Build a case's step and warm it up (compilation happens here); returns (step, seconds it took)."""
    start = time.perf_counter()
    step = build()
    for _ in range(warmup):
        step()
    sync()
    return step, time.perf_counter() - start


def inference_step(model: nn.Module, x: torch.Tensor, fast_path: Optional[FastPath] = None) -> Callable[[], Any]:
    def step():
        with torch.inference_mode(), fast_path.autocast() if fast_path else contextlib.nullcontext():
            return model(x)
    return step


def calls_per_second(step: Callable[[], Any], tools: DeviceTools, min_seconds: float, min_calls: int = 1) -> float:
    """Call ``step`` until both ``min_seconds`` and ``min_calls`` are reached; calls per second."""
    tools.sync()
    start, n = time.perf_counter(), 0
    while True:
        step()
        n += 1
        tools.sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and n >= min_calls:
            return n / elapsed


def measure(cases: Sequence[Case], rounds: int, min_seconds: float, tools: DeviceTools) -> None:
    """Interleaved rounds: every case once per round, each for at least min_seconds (and one call)."""
    for r in range(rounds):
        for case in cases:
            case.samples.append(case.batch * calls_per_second(case.step, tools, min_seconds))
        log(f'  round {r + 1}/{rounds} done')


def measure_memory(cases: Sequence[Case], tools: DeviceTools) -> None:
    for case in cases:
        if case.section == 'roofline' or case.impl == 'onnxruntime':
            continue  # onnxruntime's arena is not released by malloc_trim
        base = tools.reset_peak()
        if base is None:
            return
        case.step()
        tools.sync()
        case.peak_mb = tools.peak_since(base) / MB


def conv_share(step: Callable[[], Any], batch: int, tools: DeviceTools, calls: int = 2) -> Dict[str, float]:
    """Profile ``calls`` calls of ``step``: the time its convolutions take (forward and backward kernels) and
    the throughput it would reach if everything else were free, so a gap to the roofline splits into
    convolution efficiency and everything else. A first profiled call absorbs the profiler's start-up."""
    from torch.profiler import ProfilerActivity, profile
    cuda = tools.device.type == 'cuda'
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities):
        step()
        tools.sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            step()
        tools.sync()
        wall = (time.perf_counter() - start) / calls
    conv_us = sum(e.self_device_time_total if cuda else e.self_cpu_time_total
                  for e in prof.key_averages() if 'conv' in e.key.lower())
    conv_s = conv_us / 1e6 / calls
    return dict(conv_seconds=conv_s, profiled_seconds=wall, conv_fraction=conv_s / wall,
                conv_only_per_second=batch / conv_s if conv_s else float('nan'))


def roofline_case(device, tools: DeviceTools, channels: Sequence[int] = (128, 256, 512),
                   sizes: Sequence[int] = (56, 28, 56), batch: int = 8) -> Case:
    """The fastest of a few large 3x3 convolutions (channels_last and NCHW): the achievable conv rate."""
    best = None
    for c, s in zip(channels, sizes):
        for channels_last in (True, False):
            conv = nn.Conv2d(c, c, 3, padding=1, bias=False, device=device).eval()
            x = torch.randn(batch, c, s, s, device=device)
            if channels_last:
                conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            step = inference_step(conv, x)
            step()
            macs = batch * c * c * 9 * s * s / 1e9
            rate = macs * calls_per_second(step, tools, min_seconds=0.5, min_calls=3)
            if best is None or rate > best[0]:
                best = (rate, c, s, channels_last, step, macs)
    _, c, s, channels_last, step, macs = best
    layout = 'channels_last' if channels_last else 'NCHW'
    return Case('roofline', f'conv3x3 {c}ch {s}x{s} b{batch}', 'torch', f'eager {layout}', 1, s, macs, step)


def publish(table: str, result: dict, json_path: Optional[str] = None, readme: Optional[str] = None,
            start: str = README_START, end: str = README_END) -> None:
    """A run's output: the table printed, the result as JSON, the table between markers in a docs/ file."""
    print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str))
    if readme:
        write_readme_section(readme, table, start, end)


def write_readme_section(readme: str, table: str, start: str = README_START, end: str = README_END) -> None:
    path = Path(readme)
    text = path.read_text()
    if start not in text or end not in text:
        raise ValueError(f'{readme}: no {start} ... {end} markers to put the table between')
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f'{head}{start}\n{table}\n{end}{tail}')


# --- which kernels ran: AMX or not ---------------------------------------------------------------------

def onednn_conv_kernels(step: Callable[[], Any]) -> Counter:
    """oneDNN's convolution implementations (e.g. 'brg_conv_fwd:avx10_1_512_amx') over one call of ``step``,
    from torch's oneDNN verbose mode (printed by C code on file descriptor 1, so captured there)."""
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    with tempfile.TemporaryFile(mode='w+') as captured:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(captured.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                step()
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        captured.seek(0)
        lines = captured.read().splitlines()
    # implementation and source data type: 'brg_conv_fwd:avx10_1_512_amx u8'
    return Counter(f"{fields[6]} {fields[8].split()[0].split(':')[1]}" for fields in
                   (line.split(',') for line in lines if ',exec,cpu,convolution,' in line))


def openvino_conv_kernels(ov_model, x, config: Optional[dict] = None) -> Counter:
    """OpenVINO's convolution implementations (e.g. 'brgconv_avx512_amx_1x1_I8') over one inference, from its
    per-layer profiling."""
    import openvino as ov
    compiled = ov.Core().compile_model(ov_model, 'CPU', {**(config or {}), 'PERF_COUNT': True})
    request = compiled.create_infer_request()
    request.infer({0: x})
    return Counter(p.exec_type for p in request.profiling_info if p.node_type == 'Convolution')


def describe_kernels(kernels: Counter) -> str:
    """'AMX 150/150 conv, int8' (how many convolution calls ran on AMX tiles, and in which data types), or the
    ISA they ran on instead. Keys are oneDNN implementations with their source type ('... amx u8') or
    OpenVINO exec types ('brgconv_avx512_amx_1x1_I8')."""
    total = sum(kernels.values())
    if not total:
        return '-'
    types = sorted({_data_type(impl) for impl in kernels} - {''})
    suffix = f", {'/'.join(types)}" if types else ''
    amx = sum(n for impl, n in kernels.items() if 'amx' in impl.lower())
    if amx:
        return f'AMX {amx}/{total} conv{suffix}'
    isas = sorted({impl.split()[0].split(':')[-1] for impl in kernels})
    return f"{', '.join(isas)[:40]} ({total} conv{suffix})"


def _data_type(impl: str) -> str:
    """'int8', 'bf16', 'fp32' or '' from a kernel key (its source type, or OpenVINO's exec-type suffix)."""
    last = impl.lower().replace(' ', '_').split('_')[-1]
    return {'u8': 'int8', 's8': 'int8', 'i8': 'int8', 'bf16': 'bf16', 'f32': 'fp32'}.get(last, '')
