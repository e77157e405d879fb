#!/usr/bin/env python3
"""fishzoo's FishNet against pytorchcv's and timm's ResNet-50, in one process, interleaved: inference and
training img/s, peak memory and the fraction of a conv roofline it measures itself.

    python benchmarks/peers.py [--quick] [--json out.json] [--markdown docs/performance.md] [--device cuda]

The conv roofline is one of the cases: the fastest of a few large 3x3 convolutions, so "fraction of
roofline" compares like with like. pytorchcv (``pip install 'fishzoo[bench]'``) is an optional peer:
without it its rows, and the targets that need them, are left out. How cases are timed and memory is
measured: ``benchmarks/measure.py``. The full run takes about 12 minutes on 2 CPU cores.
"""
import argparse
import copy
import enum
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import reparameterize_model

import fishzoo  # noqa: F401  (registers the models)
from fishzoo.deploy.fast_path import FastPath, optimize_for_inference, retain_freed_memory, select_fast_path
from fishzoo.errors import ExportError
from fishzoo.info import count_gmacs, machine_summary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import (  # noqa: E402  (benchmarks/ is not a package: run from a checkout)
    MB,
    Case,
    DeviceTools,
    conv_share,
    default_device,
    device_tools,
    inference_step,
    log,
    measure,
    measure_memory,
    publish,
    roofline_case,
    saved_activation_bytes,
    timed_setup,
)


class Impl(str, enum.Enum):
    """Whose implementation a case runs."""
    FISHZOO = 'fishzoo'
    PYTORCHCV = 'pytorchcv'
    TIMM = 'timm'
    ONNXRUNTIME = 'onnxruntime'


class Run(str, enum.Enum):
    """How a case runs: the execution path, as the table shows it."""
    EAGER_NCHW = 'eager NCHW'
    EAGER_CL = 'eager channels_last'
    FOLDED_CL = 'BN folded, channels_last'
    FAST = 'optimize_for_inference'
    PEER_COMPILED = 'channels_last, compiled (freezing)'
    ORT = 'fishzoo export, ORT CPU'
    CHECKPOINTING = 'eager channels_last, grad checkpointing'
    TRAIN_COMPILED = 'channels_last, compiled (train --compile)'


MAIN = ''  # CaseKey.model for the run's main model (the config's model)


@dataclass(frozen=True)
class CaseKey:
    """Which case: targets and reports refer to cases by this, never by their display strings."""
    section: str  # 'inference' | 'training'
    impl: Impl
    run: Run
    model: str = MAIN


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


class Cases:
    """The measured cases of a run, looked up by :class:`CaseKey`."""

    def __init__(self, main_model: str):
        self.main_model = main_model
        self._by_key: Dict[Tuple[str, str, str, str], Case] = {}

    def _resolve(self, key: CaseKey) -> Tuple[str, str, str, str]:
        return key.section, key.model or self.main_model, key.impl.value, key.run.value

    def add(self, key: CaseKey, case: Case) -> Case:
        self._by_key[self._resolve(key)] = case
        return case

    def get(self, key: CaseKey) -> Optional[Case]:
        return self._by_key.get(self._resolve(key))

    def __iter__(self):
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)


# --- building the cases ------------------------------------------------------------------------------------

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


class CaseBuilder:
    """Builds and warms up every case of a run, section by section; each ``add`` times the setup."""

    def __init__(self, cfg: BenchmarkConfig, tools: DeviceTools, fast_path: FastPath, work_dir: Path):
        self.cfg, self.tools, self.fast_path, self.work_dir = cfg, tools, fast_path, work_dir
        self.device = tools.device
        self.precision = 'fp32' if fast_path.precision == 'fp32' else 'auto'  # what optimize_for_inference is asked
        self.cases = Cases(cfg.model)
        g = torch.Generator().manual_seed(0)
        size, batch, tbatch = cfg.img_size, cfg.infer_batch, cfg.train_batch
        self.x = torch.randn(batch, 3, size, size, generator=g).to(self.device)
        self.x_cl = self.x.contiguous(memory_format=torch.channels_last)
        self.xt = torch.randn(tbatch, 3, size, size, generator=g).to(self.device)
        self.yt = torch.randint(0, 1000, (tbatch,), generator=g).to(self.device)
        self.xt_cl = self.xt.contiguous(memory_format=torch.channels_last)
        self.generator = g
        self.model = timm.create_model(cfg.model).eval().to(self.device)
        self.gmacs = count_gmacs(self.model, (3, size, size))
        self.reference = timm.create_model(cfg.peer_model).eval().to(self.device).to(memory_format=torch.channels_last)
        self.ref_gmacs = count_gmacs(self.reference, (3, size, size))
        self.peer = _pytorchcv(cfg.model)

    def add(self, key: CaseKey, build: Callable, batch: Optional[int] = None, size: Optional[int] = None,
            gmacs: Optional[float] = None, warmup: int = 2) -> Case:
        """Time ``build()`` (which returns the step) and its warm-up; batch, size and GMACs default to the
        main model's inference case."""
        model_name = key.model or self.cfg.model
        log(f'  building {key.section} {model_name} {key.impl.value} {key.run.value}')
        step, seconds = timed_setup(build, warmup, self.tools.sync)
        return self.cases.add(key, Case(
            key.section, model_name, key.impl.value, key.run.value, batch or self.cfg.infer_batch,
            size or self.cfg.img_size, self.gmacs if gmacs is None else gmacs, step, seconds))

    def fishzoo_inference(self) -> None:
        model, x, x_cl = self.model, self.x, self.x_cl
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.add(CaseKey('inference', Impl.FISHZOO, Run.EAGER_NCHW), partial(inference_step, model, x))
        self.add(CaseKey('inference', Impl.FISHZOO, Run.EAGER_CL), partial(inference_step, cl, x_cl))
        folded = reparameterize_model(model, inplace=False).eval().to(memory_format=torch.channels_last)
        self.add(CaseKey('inference', Impl.FISHZOO, Run.FOLDED_CL), partial(inference_step, folded, x_cl))
        fast = optimize_for_inference(model, compile=self.cfg.compile, precision=self.precision,
                                      backend='torch')  # torch's kernels against the peers'
        self.add(CaseKey('inference', Impl.FISHZOO, Run.FAST), partial(inference_step, fast, x)).module = fast

    def peer_inference(self) -> None:
        if self.peer is None:
            log('  pytorchcv is not installed: its rows are left out (pip install "fishzoo[bench]")')
            return
        peer = self.peer.eval().to(self.device)
        peer_cl = copy.deepcopy(peer).to(memory_format=torch.channels_last)
        self.add(CaseKey('inference', Impl.PYTORCHCV, Run.EAGER_NCHW), partial(inference_step, peer, self.x))
        self.add(CaseKey('inference', Impl.PYTORCHCV, Run.EAGER_CL), partial(inference_step, peer_cl, self.x_cl))
        if self.cfg.compile:
            peer_frozen = copy.deepcopy(peer_cl)
            for p in peer_frozen.parameters():
                p.requires_grad_(False)
            self.add(CaseKey('inference', Impl.PYTORCHCV, Run.PEER_COMPILED), lambda: inference_step(
                _compile_frozen(peer_frozen, self.fast_path), self.x_cl, self.fast_path))

    def reference_inference(self) -> None:
        peer_model, reference = self.cfg.peer_model, self.reference
        self.add(CaseKey('inference', Impl.TIMM, Run.EAGER_CL, peer_model),
                 partial(inference_step, reference, self.x_cl), gmacs=self.ref_gmacs)
        if self.cfg.compile:
            ref_fast = optimize_for_inference(reference, precision=self.precision, backend='torch')
            self.add(CaseKey('inference', Impl.TIMM, Run.FAST, peer_model), partial(inference_step, ref_fast, self.x),
                     gmacs=self.ref_gmacs)

    def onnxruntime_inference(self) -> None:
        if not self.cfg.onnx or self.device.type != 'cpu':
            return
        from fishzoo.deploy.export import export_onnx
        from fishzoo.deploy.onnx import session as onnx_session
        from fishzoo.deploy.runner import INPUT_NAME
        size = self.cfg.img_size
        try:
            path = export_onnx(self.model, self.work_dir / f'{self.cfg.model}.onnx', (3, size, size))
        except ExportError as e:
            log(f'  onnxruntime row left out: {e}')
            return
        session, feed = onnx_session(path), {INPUT_NAME: self.x.cpu().numpy()}
        self.add(CaseKey('inference', Impl.ONNXRUNTIME, Run.ORT), lambda: (lambda: session.run(None, feed)))

    def _train(self, model: nn.Module, channels_last: bool, compile: bool = False) -> Callable:
        model = model.to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        x = self.xt_cl if channels_last else self.xt
        return lambda: _train_step(model, x, self.yt, compile, self.fast_path)

    def training(self) -> None:
        """The main model (eager, channels_last, checkpointing, compiled), pytorchcv's and timm's reference."""
        cfg = self.cfg
        train = dict(batch=cfg.train_batch)

        def fishzoo_model(checkpointing=False):
            model = timm.create_model(cfg.model)
            model.set_grad_checkpointing(checkpointing)
            return model
        self.add(CaseKey('training', Impl.FISHZOO, Run.EAGER_NCHW), self._train(fishzoo_model(), False), **train)
        self.add(CaseKey('training', Impl.FISHZOO, Run.EAGER_CL), self._train(fishzoo_model(), True), **train)
        self.add(CaseKey('training', Impl.FISHZOO, Run.CHECKPOINTING), self._train(fishzoo_model(True), True), **train)
        if cfg.compile:
            self.add(CaseKey('training', Impl.FISHZOO, Run.TRAIN_COMPILED),
                     self._train(fishzoo_model(), True, compile=True), warmup=3, **train)
        if self.peer is not None:
            self.add(CaseKey('training', Impl.PYTORCHCV, Run.EAGER_NCHW),
                     self._train(_pytorchcv(cfg.model), False), **train)
            self.add(CaseKey('training', Impl.PYTORCHCV, Run.EAGER_CL),
                     self._train(_pytorchcv(cfg.model), True), **train)
        self.add(CaseKey('training', Impl.TIMM, Run.EAGER_CL, cfg.peer_model),
                 self._train(timm.create_model(cfg.peer_model), True), gmacs=self.ref_gmacs, **train)

    def small_models(self) -> None:
        """The low-resolution FishNets and the dual MobileNetV2: the fast path and a channels_last step."""
        cfg, g = self.cfg, self.generator
        for small in cfg.small_models:
            s = cfg.small_img_size if 'fishnet' in small else cfg.img_size
            model = timm.create_model(small).eval().to(self.device)
            shape = dict(size=s, gmacs=count_gmacs(model, (3, s, s)))
            xs = torch.randn(cfg.infer_batch, 3, s, s, generator=g).to(self.device)
            fast_small = optimize_for_inference(model, compile=cfg.compile, precision=self.precision, backend='torch')
            self.add(CaseKey('inference', Impl.FISHZOO, Run.FAST, small), partial(inference_step, fast_small, xs),
                     **shape)
            xst = torch.randn(cfg.train_batch, 3, s, s, generator=g).to(self.device)
            xst = xst.contiguous(memory_format=torch.channels_last)
            yst = torch.randint(0, model.num_classes, (cfg.train_batch,), generator=g).to(self.device)
            train_model = timm.create_model(small).to(self.device).to(memory_format=torch.channels_last)
            self.add(CaseKey('training', Impl.FISHZOO, Run.EAGER_CL, small),
                     partial(_train_step, train_model, xst, yst, False, self.fast_path), batch=cfg.train_batch,
                     **shape)


def build_cases(cfg: BenchmarkConfig, tools: DeviceTools, fast_path: FastPath, work_dir: Path) -> Cases:
    builder = CaseBuilder(cfg, tools, fast_path, work_dir)
    builder.fishzoo_inference()
    builder.peer_inference()
    builder.reference_inference()
    builder.onnxruntime_inference()
    builder.training()
    builder.small_models()
    return builder.cases


def _conv_shares(cases: Cases, roofline: Case, tools: DeviceTools, fast_path: FastPath) -> Dict[str, Dict[str, float]]:
    """Profiled convolution share of the two compiled fishzoo paths (see measure.conv_share)."""
    shares = {}

    def record(case, share, factor):
        share['conv_only_of_roofline'] = share['conv_only_per_second'] * 2 * case.gmacs * factor / roofline.gflops
        shares[case.key] = share

    train = cases.get(CaseKey('training', Impl.FISHZOO, Run.TRAIN_COMPILED))
    if train is not None:
        record(train, conv_share(train.step, train.batch, tools), 3)
    infer = cases.get(CaseKey('inference', Impl.FISHZOO, Run.FAST))
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


# --- targets -------------------------------------------------------------------------------------------------

class MissingCase(LookupError):
    """A target refers to a case the run did not measure."""


@dataclass(frozen=True)
class Measured:
    """What the targets read: the cases, the roofline and the activation memory of one run."""
    cases: Cases
    roofline: Case
    activation_mb: Dict[str, float]

    def case(self, key: CaseKey) -> Case:
        found = self.cases.get(key)
        if found is None:
            raise MissingCase(f'{key.section} / {key.model or self.cases.main_model} / {key.impl.value} / '
                              f'{key.run.value}')
        return found

    def rate(self, key: CaseKey) -> float:
        return self.case(key).per_second

    def ratio(self, a: CaseKey, b: CaseKey) -> float:
        return self.rate(a) / self.rate(b)


@dataclass(frozen=True)
class Target:
    """A ratio this project holds itself to; ``needs`` names what the run must include for it to apply."""
    name: str
    value: Callable[[Measured], float]
    needed: float
    higher_is_better: bool = True
    needs: Tuple[str, ...] = ()  # of 'compile', 'onnx', 'pytorchcv', 'memory'


def _key(section: str, impl: Impl, run: Run) -> CaseKey:
    return CaseKey(section, impl, run)


FAST = _key('inference', Impl.FISHZOO, Run.FAST)
TRAIN_FAST = _key('training', Impl.FISHZOO, Run.TRAIN_COMPILED)
PCV_TRAIN = (_key('training', Impl.PYTORCHCV, Run.EAGER_NCHW), _key('training', Impl.PYTORCHCV, Run.EAGER_CL))

TARGETS = (
    Target('inference: optimize_for_inference / best pytorchcv eager',
           lambda m: m.rate(FAST) / max(m.rate(_key('inference', Impl.PYTORCHCV, Run.EAGER_NCHW)),
                                        m.rate(_key('inference', Impl.PYTORCHCV, Run.EAGER_CL))),
           1.25, needs=('pytorchcv',)),
    Target('inference: optimize_for_inference / pytorchcv compiled the same way',
           lambda m: m.ratio(FAST, _key('inference', Impl.PYTORCHCV, Run.PEER_COMPILED)), 0.98,
           needs=('pytorchcv', 'compile')),
    Target('inference: optimize_for_inference GFLOP/s / conv roofline',
           lambda m: m.case(FAST).gflops / m.roofline.gflops, 0.85),
    Target('inference: fishzoo eager channels_last / pytorchcv eager channels_last',
           lambda m: m.ratio(_key('inference', Impl.FISHZOO, Run.EAGER_CL),
                             _key('inference', Impl.PYTORCHCV, Run.EAGER_CL)), 1.0, needs=('pytorchcv',)),
    Target('inference: optimize_for_inference / onnxruntime',
           lambda m: m.ratio(FAST, _key('inference', Impl.ONNXRUNTIME, Run.ORT)), 1.0, needs=('onnx',)),
    # pytorchcv as shipped runs NCHW; its channels_last variant is the stricter comparison, shown as well
    Target('training: fishzoo compiled / pytorchcv eager (as shipped, NCHW)',
           lambda m: m.ratio(TRAIN_FAST, PCV_TRAIN[0]), 1.3, needs=('pytorchcv', 'compile')),
    Target('training: fishzoo compiled / pytorchcv eager channels_last',
           lambda m: m.ratio(TRAIN_FAST, PCV_TRAIN[1]), 1.3, needs=('pytorchcv', 'compile')),
    Target('training: fishzoo compiled peak memory / pytorchcv eager (lowest)',
           lambda m: m.case(TRAIN_FAST).peak_mb / min(m.case(k).peak_mb for k in PCV_TRAIN), 1.0,
           higher_is_better=False, needs=('pytorchcv', 'compile', 'memory')),
    Target('training: activation memory with / without grad checkpointing',
           lambda m: m.activation_mb['checkpointing'] / m.activation_mb['plain'], 0.5, higher_is_better=False),
    Target('training: step time with / without grad checkpointing',
           lambda m: m.ratio(_key('training', Impl.FISHZOO, Run.EAGER_CL),
                             _key('training', Impl.FISHZOO, Run.CHECKPOINTING)), 1.4, higher_is_better=False),
)


def run_features(cfg: BenchmarkConfig, measured: Measured) -> set:
    """What this run includes, as named in ``Target.needs``."""
    features = {'compile'} if cfg.compile else set()
    if cfg.onnx and (cfg.device or default_device()) == 'cpu':
        features.add('onnx')
    if _pytorchcv_available():
        features.add('pytorchcv')
    if measured.roofline.peak_mb is not None or any(c.peak_mb is not None for c in measured.cases):
        features.add('memory')
    return features


def _pytorchcv_available() -> bool:
    try:
        import pytorchcv  # noqa: F401
    except ImportError:
        return False
    return True


def evaluate_targets(measured: Measured, features: set, targets: Sequence[Target] = TARGETS) -> List[Dict]:
    """Every target that applies to this run, measured; a target whose case is missing fails loudly."""
    rows = []
    for t in targets:
        if not set(t.needs) <= features:
            continue
        try:
            value = t.value(measured)
        except MissingCase as e:
            raise MissingCase(f'target {t.name!r} needs a case this run did not measure: {e}') from None
        met = value >= t.needed if t.higher_is_better else value <= t.needed
        rows.append(dict(target=t.name, value=value, needed=t.needed, higher_is_better=t.higher_is_better, met=met))
    return rows


# --- the run, its table ---------------------------------------------------------------------------------------

def markdown(result: Dict) -> str:
    roof = result['roofline']
    lines = [f"Machine: {result['machine']}; {result['threads']} threads; {result['allocator']}. "
             f"Conv roofline: {roof['gflops']:.0f} GFLOP/s ({roof['model']}, {roof['path']}). "
             f"Medians of {result['config']['infer_rounds']} (inference) / {result['config']['train_rounds']} "
             f"(training) interleaved rounds; whole run {result['seconds'] / 60:.1f} min.", '',
             '| task | model | implementation | path | batch x px | img/s | GFLOP/s | of roofline | peak MB '
             '| setup s |',
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
                      f"({share['conv_seconds'] * 1e3:.0f} of {share['profiled_seconds'] * 1e3:.0f} ms); "
                      "were everything "
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


def run_benchmark(cfg: Optional[BenchmarkConfig] = None, work_dir: Optional[str] = None) -> Dict:
    cfg = cfg or BenchmarkConfig()
    start = time.perf_counter()
    device = torch.device(cfg.device or default_device())
    tools = device_tools(device)
    # fp32 on the CPU: these rows compare implementations at equal numerics (the bf16 and int8 paths are
    # benchmarks/deploy.py's); on CUDA the fast path's 16-bit autocast, which peers compiled the same way share
    fast_path = select_fast_path(device, compile=cfg.compile, precision='fp32' if device.type == 'cpu' else 'auto')
    # The allocator setting is process-wide, so every peer measured here gets it too (fair by construction).
    retained = fast_path.retain_freed_memory and retain_freed_memory()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        log('roofline')
        roofline = roofline_case(device, tools)
        log('building and warming up (compilation included)')
        cases = build_cases(cfg, tools, fast_path, Path(work_dir or tmp))
    inference = [roofline] + [c for c in cases if c.section == 'inference']
    training = [c for c in cases if c.section == 'training']
    log('measuring inference')
    measure(inference, cfg.infer_rounds, cfg.min_seconds, tools)
    log('measuring training')
    measure(training, cfg.train_rounds, 0.0, tools)
    measure_memory(list(cases), tools)
    shares = _conv_shares(cases, roofline, tools, fast_path) if cfg.compile else {}
    measured = Measured(cases, roofline, _activation_memory(cfg, device))
    result = dict(
        machine=machine_summary(), device=str(device), threads=torch.get_num_threads(),
        allocator=('glibc, freed memory kept in the process for every case' if retained else 'default allocator'),
        fast_path={k: str(v) for k, v in asdict(fast_path).items()}, config=asdict(cfg),
        roofline=roofline.as_dict(), cases=[c.as_dict() for c in cases], activation_mb=measured.activation_mb,
        fused_max_rel_diff=_fused_difference(cfg, device), conv_share=shares,
        targets=evaluate_targets(measured, run_features(cfg, measured)),
    )
    result['seconds'] = time.perf_counter() - start
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='benchmarks/peers.py', description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small inputs, no compilation: a smoke run in seconds')
    parser.add_argument('--json', metavar='FILE', help='also write the result as JSON')
    parser.add_argument('--markdown', '--readme', dest='readme', metavar='FILE',
                        help='put the table between the benchmark markers of this Markdown file (docs/performance.md)')
    parser.add_argument('--device', help="'cpu' or 'cuda' (default: cuda when present)")
    parser.add_argument('--no-compile', action='store_true', help='leave out the compiled paths')
    parser.add_argument('--no-onnx', action='store_true', help='leave out onnxruntime')
    args = parser.parse_args(argv)
    if args.readme and not Path(args.readme).is_file():
        parser.error(f'--readme {args.readme}: no such file')
    cfg = BenchmarkConfig.quick() if args.quick else BenchmarkConfig()
    cfg.device = args.device or cfg.device
    cfg.compile = cfg.compile and not args.no_compile
    cfg.onnx = cfg.onnx and not args.no_onnx
    result = run_benchmark(cfg)
    publish(markdown(result), result, args.json, args.readme)
    return 0


if __name__ == '__main__':
    sys.exit(main())
