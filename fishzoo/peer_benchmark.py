"""``fishzoo benchmark`` / ``scripts/benchmark.py``: fishzoo's FishNet against pytorchcv's and timm's
ResNet-50, in one process, interleaved.

Every case (a model, an implementation, an execution path) is built and warmed up first (compilation
included); then the cases run in rounds, each case for at least ``min_seconds`` per round, so drift of
the machine (another tenant, thermal state) lands on all of them alike. A case's throughput is the
median over rounds; ratios are taken between medians of the same run. The conv roofline is one of the
cases: the fastest of a few large 3x3 convolutions, so "fraction of roofline" compares like with like.

Memory: on the CPU the peak resident set of one call/step above the process's resident set just before
it (Linux's VmHWM, reset through /proc/self/clear_refs after giving freed memory back with
malloc_trim); on CUDA ``max_memory_allocated`` above the allocation before it. Either way it is what the
call itself needs on top of the weights (and, for training, the optimizer state), which is what
differs between implementations. Activation memory (for gradient checkpointing) is the bytes of
distinct non-parameter tensors autograd saves for the backward pass.

pytorchcv (``pip install 'fishzoo[bench]'``) is an optional peer: without it its rows are left out.
"""
import contextlib
import copy
import ctypes
import ctypes.util
import gc
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import reparameterize_model

from fishzoo.benchmark import machine_summary
from fishzoo.inference import FastPath, optimize_for_inference, retain_freed_memory, select_fast_path
from fishzoo.info import count_gmacs

_logger = logging.getLogger(__name__)
MB = 2 ** 20
README_START, README_END = '<!-- benchmark:start -->', '<!-- benchmark:end -->'


# ----------------------------------------------------------------------------------------------------------
# Device: synchronisation and peak memory
# ----------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------

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
    activation_mb: Optional[float] = None
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


def _timed_setup(build: Callable[[], Callable[[], Any]], warmup: int, sync) -> (Callable, float):
    start = time.perf_counter()
    step = build()
    for _ in range(warmup):
        step()
    sync()
    return step, time.perf_counter() - start


def _inference_step(model: nn.Module, x: torch.Tensor, fast_path: Optional[FastPath] = None):
    def step():
        with torch.inference_mode(), fast_path.autocast() if fast_path else contextlib.nullcontext():
            return model(x)
    return step


def _compile_frozen(model: nn.Module, fast_path: FastPath):
    """A peer compiled the way optimize_for_inference compiles (freezing, C++ wrapper), without the folding."""
    compiled = torch.compile(model)

    def run(x):
        with fast_path.inductor_config():
            return compiled(x)
    return run


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, compile: bool, fast_path: FastPath):
    model.train()
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    def step():
        optimizer.zero_grad(set_to_none=True)
        with fast_path.autocast():
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
    return step


def _pytorchcv(name: str) -> Optional[nn.Module]:
    try:
        from pytorchcv.model_provider import get_model
    except ImportError:
        return None
    return get_model(name, pretrained=False)


def _roofline_case(device, tools: DeviceTools, channels: Sequence[int] = (128, 256, 512),
                   sizes: Sequence[int] = (56, 28, 56), batch: int = 8) -> Case:
    """The fastest of a few large 3x3 convolutions (channels_last and NCHW): the achievable conv rate."""
    best = None
    for c, s in zip(channels, sizes):
        for channels_last in (True, False):
            conv = nn.Conv2d(c, c, 3, padding=1, bias=False, device=device).eval()
            x = torch.randn(batch, c, s, s, device=device)
            if channels_last:
                conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            step = _inference_step(conv, x)
            step()
            macs = batch * c * c * 9 * s * s / 1e9
            rate = macs * _calls_per_second(step, tools, min_seconds=0.5, min_calls=3)
            if best is None or rate > best[0]:
                best = (rate, c, s, channels_last, step, macs)
    _, c, s, channels_last, step, macs = best
    layout = 'channels_last' if channels_last else 'NCHW'
    return Case('roofline', f'conv3x3 {c}ch {s}x{s} b{batch}', 'torch', f'eager {layout}', 1, s, macs, step)


@dataclass
class BenchmarkConfig:
    model: str = 'fishnet150'
    peer_model: str = 'resnet50'  # timm's reference CNN
    img_size: int = 224
    infer_batch: int = 8
    train_batch: int = 16
    compile: bool = True
    onnx: bool = True
    small_models: Sequence[str] = ('fishnet_s64', 'fishnet_m64', 'fishnet_l64', 'mobilenetv2_dual_050',
                                   'mobilenetv2_dual_100')
    small_img_size: int = 64  # for the low-resolution FishNets; the MobileNets run at img_size
    infer_rounds: int = 5
    train_rounds: int = 3
    min_seconds: float = 1.0
    device: Optional[str] = None

    @classmethod
    def quick(cls) -> 'BenchmarkConfig':
        """Under a minute: every code path but compilation and ONNX, on small batches (pytorchcv's FishNet
        pools over a fixed 7x7, so the main model stays at 224 px)."""
        return cls(model='fishnet99', peer_model='resnet18', img_size=224, infer_batch=1, train_batch=2,
                   compile=False, onnx=False, small_models=('fishnet_s64', 'mobilenetv2_dual_050'),
                   small_img_size=32, infer_rounds=2, train_rounds=1, min_seconds=0.0)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_cases(cfg: BenchmarkConfig, tools: DeviceTools, fast_path: FastPath, work_dir: Path) -> List[Case]:
    device = tools.device
    g = torch.Generator().manual_seed(0)
    cases: List[Case] = []

    def add(section, model_name, impl, path, batch, size, gmacs, build, warmup=2):
        _log(f'  building {section} {model_name} {impl} {path}')
        step, seconds = _timed_setup(build, warmup, tools.sync)
        cases.append(Case(section, model_name, impl, path, batch, size, gmacs, step, seconds))
        return cases[-1]

    # --- inference, main model
    name, size = cfg.model, cfg.img_size
    x = torch.randn(cfg.infer_batch, 3, size, size, generator=g).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    fishzoo_model = timm.create_model(name).eval().to(device)
    gmacs = count_gmacs(fishzoo_model, (3, size, size))
    cl = copy.deepcopy(fishzoo_model).to(memory_format=torch.channels_last)
    add('inference', name, 'fishzoo', 'eager NCHW', cfg.infer_batch, size, gmacs,
        lambda: _inference_step(fishzoo_model, x))
    add('inference', name, 'fishzoo', 'eager channels_last', cfg.infer_batch, size, gmacs,
        lambda: _inference_step(cl, x_cl))
    folded = reparameterize_model(fishzoo_model, inplace=False).eval().to(memory_format=torch.channels_last)
    add('inference', name, 'fishzoo', 'BN folded, channels_last', cfg.infer_batch, size, gmacs,
        lambda: _inference_step(folded, x_cl))
    fast = optimize_for_inference(fishzoo_model, compile=cfg.compile)
    add('inference', name, 'fishzoo', 'optimize_for_inference', cfg.infer_batch, size, gmacs,
        lambda: _inference_step(fast, x)).module = fast

    peer = _pytorchcv(name)
    if peer is None:
        _log('  pytorchcv is not installed: its rows are left out (pip install "fishzoo[bench]")')
    else:
        peer = peer.eval().to(device)
        peer_cl = copy.deepcopy(peer).to(memory_format=torch.channels_last)
        add('inference', name, 'pytorchcv', 'eager NCHW', cfg.infer_batch, size, gmacs,
            lambda: _inference_step(peer, x))
        add('inference', name, 'pytorchcv', 'eager channels_last', cfg.infer_batch, size, gmacs,
            lambda: _inference_step(peer_cl, x_cl))
        if cfg.compile:
            peer_frozen = copy.deepcopy(peer_cl)
            for p in peer_frozen.parameters():
                p.requires_grad_(False)
            add('inference', name, 'pytorchcv', 'channels_last, compiled (freezing)', cfg.infer_batch, size, gmacs,
                lambda: _inference_step(_compile_frozen(peer_frozen, fast_path), x_cl, fast_path))

    reference = timm.create_model(cfg.peer_model).eval().to(device).to(memory_format=torch.channels_last)
    ref_gmacs = count_gmacs(reference, (3, size, size))
    add('inference', cfg.peer_model, 'timm', 'eager channels_last', cfg.infer_batch, size, ref_gmacs,
        lambda: _inference_step(reference, x_cl))
    if cfg.compile:
        ref_fast = optimize_for_inference(reference)
        add('inference', cfg.peer_model, 'timm', 'optimize_for_inference', cfg.infer_batch, size, ref_gmacs,
            lambda: _inference_step(ref_fast, x))

    if cfg.onnx and device.type == 'cpu':
        from fishzoo.export import INPUT_NAME, ExportError, export_onnx, onnx_session
        try:
            path = export_onnx(fishzoo_model, work_dir / f'{name}.onnx', (3, size, size))
            session = onnx_session(path)
            feed = {INPUT_NAME: x.cpu().numpy()}
            add('inference', name, 'onnxruntime', 'fishzoo export, ORT CPU', cfg.infer_batch, size, gmacs,
                lambda: (lambda: session.run(None, feed)))
        except ExportError as e:
            _log(f'  onnxruntime row left out: {e}')

    # --- training, main model
    xt = torch.randn(cfg.train_batch, 3, size, size, generator=g).to(device)
    yt = torch.randint(0, 1000, (cfg.train_batch,), generator=g).to(device)
    xt_cl = xt.contiguous(memory_format=torch.channels_last)

    def fishzoo_train(channels_last=False, compile=False, checkpointing=False):
        model = timm.create_model(name).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.set_grad_checkpointing(checkpointing)
        return lambda: _train_step(model, xt_cl if channels_last else xt, yt, compile, fast_path)

    add('training', name, 'fishzoo', 'eager NCHW', cfg.train_batch, size, gmacs, fishzoo_train())
    add('training', name, 'fishzoo', 'eager channels_last', cfg.train_batch, size, gmacs,
        fishzoo_train(channels_last=True))
    add('training', name, 'fishzoo', 'eager channels_last, grad checkpointing', cfg.train_batch, size, gmacs,
        fishzoo_train(channels_last=True, checkpointing=True))
    if cfg.compile:
        add('training', name, 'fishzoo', 'channels_last, compiled (train --compile)', cfg.train_batch, size, gmacs,
            fishzoo_train(channels_last=True, compile=True), warmup=3)
    if peer is not None:
        def peer_train(channels_last):
            model = _pytorchcv(name).to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            return lambda: _train_step(model, xt_cl if channels_last else xt, yt, False, fast_path)
        add('training', name, 'pytorchcv', 'eager NCHW', cfg.train_batch, size, gmacs, peer_train(False))
        add('training', name, 'pytorchcv', 'eager channels_last', cfg.train_batch, size, gmacs, peer_train(True))
    ref_train = timm.create_model(cfg.peer_model).to(device).to(memory_format=torch.channels_last)
    add('training', cfg.peer_model, 'timm', 'eager channels_last', cfg.train_batch, size, ref_gmacs,
        lambda: _train_step(ref_train, xt_cl, yt, False, fast_path))

    # --- the low-resolution FishNets and the dual MobileNetV2
    for small in cfg.small_models:
        s = cfg.small_img_size if 'fishnet' in small else cfg.img_size
        model = timm.create_model(small).eval().to(device)
        small_gmacs = count_gmacs(model, (3, s, s))
        xs = torch.randn(cfg.infer_batch, 3, s, s, generator=g).to(device)
        fast_small = optimize_for_inference(model, compile=cfg.compile)
        add('inference', small, 'fishzoo', 'optimize_for_inference', cfg.infer_batch, s, small_gmacs,
            lambda: _inference_step(fast_small, xs))
        xst = torch.randn(cfg.train_batch, 3, s, s, generator=g).to(device).contiguous(
            memory_format=torch.channels_last)
        yst = torch.randint(0, model.num_classes, (cfg.train_batch,), generator=g).to(device)
        train_model = timm.create_model(small).to(device).to(memory_format=torch.channels_last)
        add('training', small, 'fishzoo', 'eager channels_last', cfg.train_batch, s, small_gmacs,
            lambda: _train_step(train_model, xst, yst, False, fast_path))
    return cases


def _calls_per_second(step: Callable[[], Any], tools: DeviceTools, min_seconds: float, min_calls: int = 1) -> float:
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
            case.samples.append(case.batch * _calls_per_second(case.step, tools, min_seconds))
        _log(f'  round {r + 1}/{rounds} done')


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


def _conv_shares(cases: Sequence[Case], cfg: BenchmarkConfig, roofline: Case, tools: DeviceTools,
                 fast_path: FastPath) -> Dict[str, Dict[str, float]]:
    shares = {}

    def record(case, share, factor):
        share['conv_only_of_roofline'] = share['conv_only_per_second'] * 2 * case.gmacs * factor / roofline.gflops
        shares[case.key] = share

    train = _find(cases, 'training', cfg.model, 'fishzoo', 'channels_last, compiled (train --compile)')
    if train is not None:
        record(train, conv_share(train.step, train.batch, tools), 3)
    infer = _find(cases, 'inference', cfg.model, 'fishzoo', 'optimize_for_inference')
    if infer is not None and fast_path.cpp_wrapper:
        # Kernels called from inductor's C++ wrapper are invisible to the profiler: profile the same frozen
        # graph with the Python wrapper (a fresh compile; every case has been measured by now).
        model = infer.module.model  # the folded channels_last model optimize_for_inference compiled
        torch._dynamo.reset()
        compiled = torch.compile(model)
        x = torch.randn(infer.batch, 3, infer.img_size, infer.img_size, device=tools.device).contiguous(
            memory_format=torch.channels_last)

        def step():
            with torch.no_grad(), fast_path.inductor_config(cpp_wrapper=False):
                return compiled(x)
        step()
        record(infer, conv_share(step, infer.batch, tools), 1)
    elif infer is not None:
        record(infer, conv_share(infer.step, infer.batch, tools), 1)
    return shares


# ----------------------------------------------------------------------------------------------------------
# Targets, tables, the run
# ----------------------------------------------------------------------------------------------------------

def _find(cases, section, model, impl, path) -> Optional[Case]:
    return next((c for c in cases if (c.section, c.model, c.impl, c.path) == (section, model, impl, path)), None)


def evaluate_targets(cases: Sequence[Case], cfg: BenchmarkConfig, roofline: Case,
                     activation: Dict[str, float]) -> List[Dict]:
    """The issue's targets as measured ratios; a target whose cases are missing is left out."""
    m = cfg.model
    rows = []

    def target(name, value, needed, higher_is_better=True):
        if value is None:
            return
        met = value >= needed if higher_is_better else value <= needed
        rows.append(dict(target=name, value=value, needed=needed, higher_is_better=higher_is_better, met=met))

    def rate(section, impl, path, model=m):
        c = _find(cases, section, model, impl, path)
        return c.per_second if c is not None else None

    def ratio(a, b):
        return a / b if a is not None and b is not None else None

    fast = rate('inference', 'fishzoo', 'optimize_for_inference')
    pc_eager = [r for r in (rate('inference', 'pytorchcv', 'eager NCHW'),
                            rate('inference', 'pytorchcv', 'eager channels_last')) if r is not None]
    target('inference: optimize_for_inference / best pytorchcv eager', ratio(fast, max(pc_eager, default=None)), 1.25)
    target('inference: optimize_for_inference / pytorchcv compiled the same way',
           ratio(fast, rate('inference', 'pytorchcv', 'channels_last, compiled (freezing)')), 0.98)
    fast_case = _find(cases, 'inference', m, 'fishzoo', 'optimize_for_inference')
    target('inference: optimize_for_inference GFLOP/s / conv roofline',
           fast_case.gflops / roofline.gflops if fast_case else None, 0.85)
    target('inference: fishzoo eager channels_last / pytorchcv eager channels_last',
           ratio(rate('inference', 'fishzoo', 'eager channels_last'),
                 rate('inference', 'pytorchcv', 'eager channels_last')), 1.0)
    target('inference: optimize_for_inference / onnxruntime',
           ratio(fast, rate('inference', 'onnxruntime', 'fishzoo export, ORT CPU')), 1.0)

    train_fast = rate('training', 'fishzoo', 'channels_last, compiled (train --compile)')
    # pytorchcv as shipped runs NCHW; its channels_last variant is the stricter comparison, shown as well
    target('training: fishzoo compiled / pytorchcv eager (as shipped, NCHW)',
           ratio(train_fast, rate('training', 'pytorchcv', 'eager NCHW')), 1.3)
    target('training: fishzoo compiled / pytorchcv eager channels_last',
           ratio(train_fast, rate('training', 'pytorchcv', 'eager channels_last')), 1.3)
    fast_train_case = _find(cases, 'training', m, 'fishzoo', 'channels_last, compiled (train --compile)')
    pc_peaks = [c.peak_mb for c in cases if c.section == 'training' and c.impl == 'pytorchcv' and c.peak_mb]
    if fast_train_case is not None and fast_train_case.peak_mb and pc_peaks:
        target('training: fishzoo compiled peak memory / pytorchcv eager (lowest)',
               fast_train_case.peak_mb / min(pc_peaks), 1.0, higher_is_better=False)
    if activation:
        target('training: activation memory with / without grad checkpointing',
               activation['checkpointing'] / activation['plain'], 0.5, higher_is_better=False)
        target('training: step time with / without grad checkpointing',
               ratio(rate('training', 'fishzoo', 'eager channels_last'),
                     rate('training', 'fishzoo', 'eager channels_last, grad checkpointing')), 1.4,
               higher_is_better=False)
    return rows


def markdown(result: Dict) -> str:
    roof = result['roofline']
    lines = [f"Machine: {result['machine']}; {result['threads']} threads; {result['allocator']}. "
             f"Conv roofline: {roof['gflops']:.0f} GFLOP/s ({roof['model']}, {roof['path']}). "
             f"Medians of {result['config']['infer_rounds']} (inference) / {result['config']['train_rounds']} "
             f"(training) interleaved rounds; whole run {result['seconds'] / 60:.1f} min.", '',
             '| task | model | implementation | path | batch x px | img/s | GFLOP/s | of roofline | peak MB | setup s |',
             '|---|---|---|---|---:|---:|---:|---:|---:|---:|']
    for c in result['cases']:
        peak = f"{c['peak_mb']:.0f}" if c['peak_mb'] is not None else '-'
        frac = c['gflops'] / roof['gflops']
        lines.append(f"| {c['section']} | {c['model']} | {c['impl']} | {c['path']} | {c['batch']} x {c['img_size']} "
                     f"| {c['per_second']:.1f} | {c['gflops']:.0f} | {frac:.0%} | {peak} | {c['setup_seconds']:.0f} |")
    if result.get('activation_mb'):
        a = result['activation_mb']
        lines += ['', f"Activation memory saved for backward ({result['config']['model']}, batch "
                      f"{result['config']['train_batch']}): {a['plain']:.0f} MB, with grad checkpointing "
                      f"{a['checkpointing']:.0f} MB."]
    for key, share in result.get('conv_share', {}).items():
        lines += ['', f"{key.replace('/', ', ')}: convolutions take {share['conv_fraction']:.0%} of a profiled call "
                      f"({share['conv_seconds'] * 1e3:.0f} of {share['profiled_seconds'] * 1e3:.0f} ms); were everything "
                      f"else free it would run {share['conv_only_per_second']:.1f} img/s, "
                      f"{share['conv_only_of_roofline']:.0%} of the roofline."]
    if result['targets']:
        lines += ['', '| target | measured | needed | met |', '|---|---:|---:|---|']
        for t in result['targets']:
            sign = '>=' if t['higher_is_better'] else '<='
            lines.append(f"| {t['target']} | {t['value']:.2f} | {sign} {t['needed']:.2f} | "
                         f"{'yes' if t['met'] else '**no**'} |")
    lines += ['', f"Fused vs unfused outputs: {result['fused_max_rel_diff']:.1e} relative (limit 1e-4)."]
    return '\n'.join(lines)


def run_benchmark(cfg: Optional[BenchmarkConfig] = None, work_dir: Optional[str] = None) -> Dict:
    import tempfile
    cfg = cfg or BenchmarkConfig()
    start = time.perf_counter()
    device = torch.device(cfg.device or default_device())
    tools = device_tools(device)
    fast_path = select_fast_path(device, compile=cfg.compile)
    # The allocator setting is process-wide, so every peer measured here gets it too (fair by construction).
    retained = fast_path.retain_freed_memory and retain_freed_memory()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        _log('roofline')
        roofline = _roofline_case(device, tools)
        _log('building and warming up (compilation included)')
        cases = build_cases(cfg, tools, fast_path, Path(work_dir or tmp))
    inference = [roofline] + [c for c in cases if c.section == 'inference']
    training = [c for c in cases if c.section == 'training']
    _log('measuring inference')
    measure(inference, cfg.infer_rounds, cfg.min_seconds, tools)
    _log('measuring training')
    measure(training, cfg.train_rounds, 0.0, tools)
    measure_memory(cases, tools)
    shares = _conv_shares(cases, cfg, roofline, tools, fast_path) if cfg.compile else {}

    activation = _activation_memory(cfg, device)
    fused_diff = _fused_difference(cfg, device)
    result = dict(
        machine=machine_summary(), device=str(device), threads=torch.get_num_threads(),
        allocator=('glibc, freed memory kept in the process for every case' if retained else 'default allocator'),
        fast_path={k: str(v) for k, v in asdict(fast_path).items()}, config=asdict(cfg),
        roofline=roofline.as_dict(), cases=[c.as_dict() for c in cases], activation_mb=activation,
        fused_max_rel_diff=fused_diff, conv_share=shares,
    )
    result['targets'] = evaluate_targets(cases, cfg, roofline, activation)
    result['seconds'] = time.perf_counter() - start
    return result


def _activation_memory(cfg: BenchmarkConfig, device) -> Dict[str, float]:
    model = timm.create_model(cfg.model).to(device).train()
    x = torch.randn(cfg.train_batch, 3, cfg.img_size, cfg.img_size, device=device)
    plain = saved_activation_bytes(model, lambda: model(x))
    model.set_grad_checkpointing(True)
    checkpointing = saved_activation_bytes(model, lambda: model(x))
    return dict(plain=plain / MB, checkpointing=checkpointing / MB)


def _fused_difference(cfg: BenchmarkConfig, device) -> float:
    """Max relative difference between the plain model and its BN-folded form (fp32, eager; the compiled form
    runs exactly these weights, and on CUDA optimize_for_inference adds bf16 autocast on top)."""
    model = timm.create_model(cfg.model).eval().to(device)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # BN statistics that are not the identity, so folding has something to get wrong
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        x = torch.randn(2, 3, cfg.img_size, cfg.img_size, generator=g).to(device)
        reference = model(x).float()
        out = reparameterize_model(model, inplace=False).eval()(x).float()
    return ((out - reference).abs().max() / reference.abs().max()).item()


def write_readme_section(readme: str, table: str) -> None:
    path = Path(readme)
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f'{readme}: no {README_START} ... {README_END} markers to put the table between')
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f'{head}{README_START}\n{table}\n{README_END}{tail}')


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog='fishzoo benchmark', description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser) -> None:
    parser.add_argument('--quick', action='store_true', help='small inputs, no compilation: a smoke run in seconds')
    parser.add_argument('--json', metavar='FILE', help='also write the result as JSON')
    parser.add_argument('--readme', metavar='README', help='put the table between the benchmark markers of README')
    parser.add_argument('--device', help="'cpu' or 'cuda' (default: cuda when present)")
    parser.add_argument('--no-compile', action='store_true', help='leave out the compiled paths')
    parser.add_argument('--no-onnx', action='store_true', help='leave out onnxruntime')


def run_from_args(args) -> int:
    cfg = BenchmarkConfig.quick() if args.quick else BenchmarkConfig()
    if args.device:
        cfg.device = args.device
    if args.no_compile:
        cfg.compile = False
    if args.no_onnx:
        cfg.onnx = False
    result = run_benchmark(cfg)
    table = markdown(result)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    if args.readme:
        write_readme_section(args.readme, table)
    return 0
