"""fishzoo.precision: one policy for every place a model runs, one error for a bad value."""
import pytest
import torch

from fishzoo import precision
from fishzoo.errors import ConfigError


@pytest.mark.parametrize('typed, canonical', [('auto', 'auto'), ('FP32', 'fp32'), ('f32', 'fp32'),
                                               ('float32', 'fp32'), ('bf16', 'bf16'), ('bfloat16', 'bf16')])
def test_names_and_aliases(typed, canonical):
    assert precision.parse(typed) == canonical


@pytest.mark.parametrize('flag', ['--precision', 'precision'])
def test_a_bad_value_is_one_sentence_naming_the_flag(flag):
    with pytest.raises(ConfigError, match=f"^{flag} must be one of auto, fp32, bf16, got 'f16'$"):
        precision.for_torch('f16', flag=flag)
    with pytest.raises(ConfigError, match=f"^{flag} must be one of auto, fp32, bf16, got 'int8'$"):
        precision.for_runtime('int8', 'openvino', flag=flag)


@pytest.mark.parametrize('cpu, auto', [('amx', 'bf16'), ('avx512_bf16', 'bf16'), ('vnni', 'fp32'),
                                       ('plain', 'fp32')])
def test_torch_on_the_cpu(fake_cpu, caplog, cpu, auto):
    fake_cpu(cpu)
    with caplog.at_level('INFO', logger='fishzoo.precision'):
        decided = precision.for_torch('auto')
    assert decided.compute == auto and decided.where == 'cpu'
    assert decided.autocast_dtype == (torch.bfloat16 if auto == 'bf16' else None)
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(f'precision: {auto} on cpu (')
    assert precision.for_torch('fp32').compute == 'fp32' and precision.for_torch('bf16').compute == 'bf16'


def test_torch_elsewhere(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: False)  # a GPU before Ampere
    assert precision.for_torch('auto', 'cuda').compute == 'fp16'
    assert precision.for_torch('bf16', 'cuda').compute == 'bf16'  # asked: given
    assert precision.for_torch('fp32', 'cuda').autocast_dtype is None
    assert precision.for_torch('auto', 'mps').compute == 'fp32'
    with pytest.raises(ConfigError, match="precision='bf16' is for CPU and CUDA devices; on mps use "
                                          "precision='fp32' or precision='auto'"):
        precision.for_torch('bf16', 'mps', flag='precision')


def test_runtimes():
    default = precision.for_runtime('auto', 'openvino')
    assert default.compute == precision.RUNTIME_DEFAULT and default.openvino_hint is None
    assert precision.for_runtime('fp32', 'openvino').openvino_hint == 'f32'
    assert precision.for_runtime('bf16', 'openvino').openvino_hint == 'bf16'
    # 'auto' keeps what the export recorded, in this fishzoo's names or an older one's (OpenVINO's)
    for recorded in ('fp32', 'f32'):
        assert precision.for_runtime('auto', 'openvino', recorded=recorded).compute == 'fp32'
    assert precision.for_runtime('auto', 'openvino', recorded='default').compute == precision.RUNTIME_DEFAULT
    assert precision.for_runtime('fp32', 'openvino', recorded='bf16').compute == 'fp32'  # asked: given
    for runtime in ('onnx', 'executorch', 'litert', 'a-new-runtime'):
        assert precision.for_runtime('auto', runtime).compute == 'fp32'
        with pytest.raises(ConfigError, match=f'^--precision bf16 is for torch and OpenVINO: {runtime} runs fp32'):
            precision.for_runtime('bf16', runtime)
    with pytest.raises(ConfigError, match='onnxruntime runs fp32 models in fp32 on the CPU'):
        precision.for_runtime('bf16', 'onnx', runtime_name='onnxruntime')


@pytest.mark.parametrize('amx, env, device, expected', [
    (True, None, 'cpu', 'bf16'),
    (False, None, 'cpu', 'bf16'),  # AVX512-BF16 without AMX: measured 1.86x for a training step
    (True, 'no', 'cpu', 'bf16'),  # accelerate launch's default 'no' is not a choice
    (True, 'fp16', 'cpu', None),  # accelerate's config asked for 16 bits: its word stands
    (True, None, 'cuda', None),  # GPUs: accelerate's config decides
])
def test_training(monkeypatch, fake_cpu, amx, env, device, expected):
    fake_cpu('amx' if amx else 'avx512_bf16')
    if env is None:
        monkeypatch.delenv('ACCELERATE_MIXED_PRECISION', raising=False)
    else:
        monkeypatch.setenv('ACCELERATE_MIXED_PRECISION', env)
    decided = precision.for_training('auto', device)
    assert (decided.compute if decided else None) == expected
    assert precision.for_training('no', device).mixed_precision == 'no'
    assert precision.for_training('bf16', device).mixed_precision == 'bf16'
    with pytest.raises(ConfigError, match="--mixed-precision must be one of auto, no, bf16, fp16, got 'fp8'"):
        precision.for_training('fp8', device)
