"""optimize_for_inference and BN folding: same outputs, fewer BatchNorms, a clean eager fallback."""
import platform
import shutil
import subprocess
import sys
import warnings

import pytest
import timm
import torch
from timm.utils import reparameterize_model

import fishzoo
from fishzoo.deploy.fast_path import FastPath, select_fast_path
from fishzoo.errors import ConfigError
from tests.helpers.models import set_bn_statistics

pytestmark = pytest.mark.deploy


def _with_statistics(name):
    """A model in eval mode whose BatchNorms are not the identity (so folding has something to get wrong)."""
    return set_bn_statistics(timm.create_model(name, num_classes=10).eval(), affine=True)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _batchnorms(model):
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize('name', ['fishnet_s64', 'fishnet99', 'fishnext150'])
@pytest.mark.slow
def test_timm_reparameterize_folds_batchnorm(name):
    model = _with_statistics(name)
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        reference = model(x)
        folded = reparameterize_model(model)
        assert _rel(folded(x), reference) <= 1e-4
    assert _batchnorms(folded) < _batchnorms(model) / 2  # bn2/bn3 of every block, score and stem BNs
    assert _batchnorms(model) == _batchnorms(_with_statistics(name))  # the original is untouched
    with torch.no_grad():
        assert _rel(reparameterize_model(folded)(x), reference) <= 1e-4  # folding twice changes nothing


def test_optimize_for_inference_eager():
    model = _with_statistics('fishnet_s64')
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    fast = fishzoo.optimize_for_inference(model, compile=False, retain_memory=False, precision='fp32')
    assert not fast.compiled and fast.precision == 'fp32'
    out = fast(x)
    assert _rel(out, reference) <= 1e-4 and not out.requires_grad
    assert fast.model.stem.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(model, **kwargs):
        def run(x):
            raise RuntimeError('no C++ compiler here')
        return run
    monkeypatch.setattr(torch, 'compile', broken_compile)
    model = _with_statistics('fishnet_s64')
    fast = fishzoo.optimize_for_inference(model, retain_memory=False, precision='fp32')
    assert fast.compiled
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(RuntimeWarning, match='torch.compile failed .*no C\\+\\+ compiler here.*eagerly'):
        out = fast(x)
    assert not fast.compiled
    with torch.no_grad():
        assert _rel(out, model(x)) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize('precision, tolerance', [('fp32', 1e-4), ('bf16', 0.05)])
def test_compile_applies_freezing(precision, tolerance):
    """Inductor packs the frozen conv weights for oneDNN: what ``options={'freezing': True}`` silently skips."""
    from torch._dynamo.utils import counters
    if not select_fast_path('cpu').compile:
        pytest.skip('no C++ compiler for inductor')
    torch._dynamo.reset()
    counters.clear()
    model = _with_statistics('fishnet_s64')
    fast = fishzoo.optimize_for_inference(model, retain_memory=False, precision=precision)
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)  # no fallback to eager
        out = fast(x)
    assert fast.compiled and out.dtype == torch.float32
    assert counters['inductor']['mkldnn_conv_weight_pack_matcher_count'] > 0
    with torch.no_grad():
        assert _rel(out, model(x)) <= tolerance


@pytest.mark.slow
@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_grayscale_model_stays_compiled_across_batch_sizes(precision):
    """A one-channel model compiled channels_last failed inductor's stride check at the second batch size
    (torch 2.14) and ran eagerly from then on; the fast path keeps such models NCHW."""
    if not select_fast_path('cpu').compile:
        pytest.skip('no C++ compiler for inductor')
    torch._dynamo.reset()
    model = set_bn_statistics(timm.create_model('fishnet_s64', in_chans=1, num_classes=10).eval(), affine=True)
    fast = fishzoo.optimize_for_inference(model, retain_memory=False, precision=precision)
    assert not fast.channels_last
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)  # no fallback to eager
        for batch in (8, 3):  # the second size is where it fell back
            x = torch.randn(batch, 1, 32, 32)
            out = fast(x)
            with torch.no_grad():
                assert _rel(out, model(x)) <= (1e-4 if precision == 'fp32' else 0.05)
    assert fast.compiled


def test_fast_path_selection_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    path = select_fast_path('cuda:0')
    assert (path.device, path.channels_last, path.autocast_dtype, path.compile, path.freezing) == \
        ('cuda', True, torch.bfloat16, True, True)
    assert not path.cpp_wrapper and not path.retain_freed_memory
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: False)  # pre-Ampere
    assert select_fast_path('cuda').autocast_dtype == torch.float16
    assert not select_fast_path('cuda', compile=False).compile
    assert select_fast_path('cuda', precision='fp32').autocast_dtype is None


def test_fast_path_selection_cpu(monkeypatch, fake_cpu):
    monkeypatch.setattr(shutil, 'which', lambda name: '/usr/bin/' + name)
    fake_cpu('plain')
    path = select_fast_path('cpu')
    assert (path.channels_last, path.autocast_dtype, path.compile, path.cpp_wrapper, path.retain_freed_memory) == \
        (True, None, True, True, True)
    monkeypatch.setattr(shutil, 'which', lambda name: None)
    monkeypatch.delenv('CXX', raising=False)
    assert not select_fast_path('cpu').compile  # no C++ compiler: eager, without trying
    other = select_fast_path('mps')
    assert not other.compile and not other.channels_last and other.autocast_dtype is None


@pytest.mark.parametrize('kind, auto', [('amx', 'bf16'), ('avx512_bf16', 'bf16'), ('vnni', 'fp32'),
                                        ('plain', 'fp32')])
def test_auto_precision_follows_the_cpu(fake_cpu, kind, auto):
    """Without a model to probe, the measured table: bf16 with AMX-BF16 and with AVX512-BF16 alone (2.05x fp32
    on a real AMD EPYC; the old rule, fp32 there, came from an emulation); fp32 without bf16 instructions."""
    fake_cpu(kind)
    assert select_fast_path('cpu').precision == auto
    assert select_fast_path('cpu').autocast_dtype == (torch.bfloat16 if auto == 'bf16' else None)
    assert select_fast_path('cpu', precision='fp32').autocast_dtype is None  # fp32 asked: fp32 everywhere
    assert select_fast_path('cpu', precision='bf16').autocast_dtype == torch.bfloat16  # asked: even if slow


def test_precision_is_checked_and_shown(fake_cpu, caplog):
    fake_cpu('amx')
    model = _with_statistics('fishnet_s64')
    with caplog.at_level('INFO', logger='fishzoo'):
        fast = fishzoo.optimize_for_inference(model, compile=False, retain_memory=False)
    assert fast.precision == 'bf16' and 'precision=bf16' in repr(fast)
    assert 'bf16 on cpu (bf16 3.80x fp32 (table: Intel Xeon with AMX-BF16' in caplog.text \
        and "precision='fp32' overrides" in caplog.text
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, got 'int8'"):
        fishzoo.optimize_for_inference(model, compile=False, precision='int8')
    with pytest.raises(ConfigError, match="precision='bf16' is for CPU and CUDA"):
        select_fast_path('mps', precision='bf16')


def test_bf16_fast_path_numerics():
    """bf16 on a tiny model: fp32 logits out, within bf16's error of the exact ones, the same top-1."""
    model = _with_statistics('fishnet_s64')
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
    fast = fishzoo.optimize_for_inference(model, compile=False, retain_memory=False, precision='bf16')
    out = fast(x)
    assert out.dtype == torch.float32 and fast.precision == 'bf16'
    assert 1e-4 < _rel(out, reference) < 0.05  # really computed in bf16 (not fp32), and close
    assert (out.argmax(1) == reference.argmax(1)).float().mean() >= 0.75


_FREED_MEMORY_PROBE = """
import sys, torch
from fishzoo.deploy.fast_path import retain_freed_memory
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
if sys.argv[1] == 'retain':
    assert retain_freed_memory() and retain_freed_memory()  # idempotent
before = rss()
block = torch.ones(96 * 2 ** 20 // 4)  # 96 MB: glibc would map it on its own and unmap it when freed
del block
print((rss() - before) / 2 ** 20)
"""


@pytest.mark.skipif(not (sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'),
                    reason='glibc malloc only')
def test_retain_freed_memory_keeps_freed_blocks_in_the_process():
    """Without the setting a freed 96 MB block goes back to the kernel; with it (twice: idempotent) it stays."""
    kept = {}
    for mode in ('default', 'retain'):
        proc = subprocess.run([sys.executable, '-c', _FREED_MEMORY_PROBE, mode], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        kept[mode] = float(proc.stdout.split()[-1])
    assert kept['default'] < 16 and kept['retain'] > 80, kept


def test_inductor_config_context_with_override():
    import torch._inductor.config as inductor_config
    path = FastPath('cpu', 'fp32', channels_last=True, autocast_dtype=None, compile=True, freezing=True,
                    cpp_wrapper=True, retain_freed_memory=False)
    before = (inductor_config.freezing, inductor_config.cpp_wrapper)
    with path.inductor_config():
        assert (inductor_config.freezing, inductor_config.cpp_wrapper) == (True, True)
    with path.inductor_config(cpp_wrapper=False):
        assert (inductor_config.freezing, inductor_config.cpp_wrapper) == (True, False)
    assert (inductor_config.freezing, inductor_config.cpp_wrapper) == before


def test_compiled_mish_is_mish_compiled_and_eager():
    """CompiledMish's one-exp form is aten's Mish to 1e-6 (fp32) across the range, compiled, and aten's own
    kernel when run eagerly (where the formula's six passes are slower)."""
    from fishzoo.deploy.fast_path import CompiledMish
    if not select_fast_path('cpu').compile:
        pytest.skip('no C++ compiler for inductor')
    x = torch.cat([torch.linspace(-120, 120, 4001), torch.tensor([0.0, -1e-8, 19.99, 20.0, 20.01, 88.0, 89.0])])
    reference = torch.nn.functional.mish(x)
    assert torch.equal(CompiledMish()(x), reference)
    torch._dynamo.reset()
    compiled = torch.compile(CompiledMish())(x)
    assert torch.isfinite(compiled).all()
    assert (compiled - reference).abs().max().item() <= 2e-6
    bf16 = torch.compile(CompiledMish())(x.bfloat16()).float()
    assert (bf16 - reference).abs().max().item() <= 0.01 * reference.abs().max().item()


def test_mish_is_replaced_only_where_the_model_compiles(monkeypatch):
    from fishzoo.deploy.fast_path import CompiledMish
    model = timm.create_model('mobilenetv2_dual_050', num_classes=10).eval()
    mish = sum(type(m) is torch.nn.Mish for m in model.modules())
    assert mish > 10
    eager = fishzoo.optimize_for_inference(model, compile=False, retain_memory=False, precision='fp32')
    assert sum(type(m) is torch.nn.Mish for m in eager.model.modules()) == mish
    monkeypatch.setattr(torch, 'compile', lambda module, **kwargs: module)  # nothing compiles: the swap only
    monkeypatch.setattr('fishzoo.deploy.fast_path._cpu_compiler_available', lambda: True)
    fast = fishzoo.optimize_for_inference(model, retain_memory=False, precision='fp32', backend='torch')
    assert sum(isinstance(m, CompiledMish) for m in fast.model.modules()) == mish
    assert not any(type(m) is torch.nn.Mish for m in fast.model.modules())
    assert sum(type(m) is torch.nn.Mish for m in model.modules()) == mish  # the caller's model is untouched
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _rel(fast(x), model(x)) <= 1e-4
