"""The CPU's bf16/int8 units, read from /proc/cpuinfo or torch, and what `fishzoo info` says of them."""
import json

import pytest
import torch

from fishzoo import cpu_features as cpu_module
from fishzoo.cli import main
from fishzoo.cpu_features import CpuFeatures, cpu_features, resolve_precision
from fishzoo.errors import ConfigError


@pytest.mark.parametrize('kind, names, auto', [
    ('amx', ['AMX-BF16', 'AMX-INT8', 'AVX512-BF16', 'VNNI'], 'bf16'),
    ('avx512_bf16', ['AVX512-BF16', 'VNNI'], 'fp32'),
    ('vnni', ['VNNI'], 'fp32'),
    ('plain', [], 'fp32'),
])
def test_features_from_cpuinfo(fake_cpu, kind, names, auto):
    features = fake_cpu(kind)
    assert features.names == names and features.source == '/proc/cpuinfo'
    assert features.fast_precision == auto
    assert resolve_precision('auto') == auto and resolve_precision('fp32') == 'fp32'
    assert features.summary() == (', '.join(names) or 'no AMX, AVX512-BF16 or VNNI')


def test_without_cpuinfo_torch_answers(monkeypatch):
    monkeypatch.setattr(cpu_module, 'CPUINFO', '/nonexistent/cpuinfo')
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: True, raising=False)
    monkeypatch.delattr(torch.cpu, '_is_vnni_supported', raising=False)  # a build without the query
    cpu_features.cache_clear()
    try:
        features = cpu_features()
    finally:
        cpu_features.cache_clear()
    assert features == CpuFeatures(amx_bf16=True, amx_int8=True, avx512_bf16=True, vnni=False, source='torch')


def test_wrong_precision_is_one_sentence():
    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, bf16, got 'f16'"):
        resolve_precision('f16', '--precision')


def test_info_without_a_model_describes_the_machine(fake_cpu, capsys):
    fake_cpu('avx512_bf16')
    assert main(['info']) == 0
    out = capsys.readouterr().out
    assert 'CPU features: AVX512-BF16, VNNI (from' in out
    assert 'auto precision (inference, CPU training): fp32: this CPU has AVX512-BF16 but no AMX' in out
    fake_cpu('amx')
    assert main(['info', '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['cpu_features'] == ['AMX-BF16', 'AMX-INT8', 'AVX512-BF16', 'VNNI']
    assert info['auto_precision'] == 'bf16' and info['cores'] >= 1


def test_machine_summary_names_the_features(fake_cpu):
    from fishzoo.info import machine_summary
    fake_cpu('amx')
    assert '(AMX-BF16, AMX-INT8, AVX512-BF16, VNNI)' in machine_summary()
