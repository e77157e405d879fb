"""The CPU's bf16/int8 units, read from /proc/cpuinfo or torch, and what `fishzoo info` says of them."""
import pytest
import torch

from fishzoo import cpu_features as cpu_module
from fishzoo.cpu_features import CpuFeatures, cpu_features
from fishzoo.precision import cpu_auto, for_torch


@pytest.mark.parametrize('kind, names, auto', [
    ('amx', ['AMX-BF16', 'AMX-INT8', 'AVX512-BF16', 'VNNI'], 'bf16'),
    ('avx512_bf16', ['AVX512-BF16', 'VNNI'], 'bf16'),  # measured: 2.05x fp32 on a real AMD EPYC
    ('vnni', ['VNNI'], 'fp32'),
    ('plain', [], 'fp32'),
])
def test_features_from_cpuinfo(fake_cpu, kind, names, auto):
    features = fake_cpu(kind)
    assert features.names == names and features.source == '/proc/cpuinfo'
    assert cpu_auto() == auto
    assert for_torch('auto').compute == auto and for_torch('fp32').compute == 'fp32'
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
