"""fishzoo.precision_probe: 'auto' chooses bf16 where this CPU measurably runs the model faster in it."""
import argparse

import pytest
import timm
import torch

from fishzoo import precision, precision_probe
from fishzoo.precision_probe import ProbeWork


@pytest.fixture
def probe_on(monkeypatch, tmp_path):
    """The probe runs (the suite decides by the table), with a cache of this test's own; ``timed(fp32, bf16)``
    makes every measurement give those seconds and returns the list of the works it was asked to measure."""
    monkeypatch.setenv('FISHZOO_PRECISION_PROBE', 'on')
    monkeypatch.setenv('FISHZOO_CACHE', str(tmp_path / 'cache'))

    def timed(fp32, bf16):
        calls = []

        def fake(work, rounds=3):
            calls.append(work)
            return fp32, bf16
        monkeypatch.setattr(precision_probe, 'measure', fake)
        return calls
    return timed


def small_work(training=False):
    return ProbeWork(timm.create_model('fishnet_s64', num_classes=3), (3, 32, 32), batch=2, training=training)


@pytest.mark.parametrize('cpu, auto, why', [
    ('amx', 'bf16', 'bf16 3.80x fp32 (table: Intel Xeon with AMX-BF16'),
    ('avx512_bf16', 'bf16', 'bf16 2.05x fp32 (table: AMD EPYC with AVX512-BF16, no AMX'),
    ('vnni', 'fp32', 'this CPU has no bf16 instructions'),
    ('plain', 'fp32', 'this CPU has no bf16 instructions'),
])
def test_the_measured_table_decides_without_a_model(fake_cpu, cpu, auto, why):
    """The old rule (bf16 only with AMX) came from an emulation; a real AVX512-BF16 CPU runs bf16 2.05x fp32."""
    fake_cpu(cpu)
    chosen, reason = precision.cpu_decision()
    assert chosen == auto and reason.startswith(why), reason


def test_the_probe_decides_and_is_cached(fake_cpu, probe_on, caplog):
    fake_cpu('avx512_bf16')
    calls = probe_on(0.100, 0.050)
    work = small_work()
    with caplog.at_level('INFO', logger='fishzoo.precision'):
        decided = precision.for_torch('auto', work=work)
    assert decided.compute == 'bf16' and 'bf16 2.00x fp32 (measured: inference at 2x3x32x32' in decided.reason
    assert 'fp32 100 ms, bf16 50 ms' in caplog.text  # the figure that decided it is logged
    assert precision.for_torch('auto', work=work).reason.startswith('bf16 2.00x fp32 (cached')
    assert len(calls) == 1  # measured once per machine and model
    assert precision.for_torch('fp32', work=work).compute == 'fp32' and len(calls) == 1  # asked: no probe


def test_a_machine_where_bf16_does_not_pay_stays_fp32(fake_cpu, probe_on):
    """The table says bf16 for AVX512-BF16; a model this CPU runs no faster in bf16 stays exact."""
    fake_cpu('avx512_bf16')
    probe_on(0.100, 0.095)
    chosen, reason = precision.cpu_decision(small_work())
    assert chosen == 'fp32' and 'below the 1.15x that bf16 must gain' in reason
    probe_on(0.100, 0.050)
    # cached per model and mode: the training step of the same model is measured on its own
    assert precision.for_training('auto', work=small_work(training=True)).compute == 'bf16'


def test_no_probe_without_bf16_instructions_or_when_off(fake_cpu, probe_on, monkeypatch):
    calls = probe_on(0.1, 0.01)
    fake_cpu('vnni')
    assert precision.cpu_decision(small_work())[0] == 'fp32' and not calls  # emulated bf16: nothing to measure
    fake_cpu('avx512_bf16')
    monkeypatch.setenv('FISHZOO_PRECISION_PROBE', 'off')
    assert precision.cpu_decision(small_work())[1].startswith('bf16 2.05x fp32 (table') and not calls


def test_a_probe_that_fails_leaves_the_table(fake_cpu, probe_on, monkeypatch):
    fake_cpu('avx512_bf16')

    def broken(work, rounds=3):
        raise RuntimeError('no kernel')
    monkeypatch.setattr(precision_probe, 'measure', broken)
    assert precision.cpu_decision(small_work())[1].startswith('bf16 2.05x fp32 (table')


def test_the_real_probe_leaves_the_model_alone():
    """A training probe runs forward and backward on a copy: the model's weights and gradients are untouched."""
    work = small_work(training=True)
    before = {k: v.clone() for k, v in work.model.state_dict().items()}
    fp32_s, bf16_s = precision_probe.measure(work, rounds=1)
    assert fp32_s > 0 and bf16_s > 0
    assert all(torch.equal(before[k], v) for k, v in work.model.state_dict().items())
    assert all(p.grad is None for p in work.model.parameters())


def test_training_measures_the_runs_own_model(fake_cpu, probe_on, monkeypatch):
    from fishzoo.train.command import training_work
    fake_cpu('avx512_bf16')
    args = argparse.Namespace(mixed_precision='auto', model='fishnet_s64', in_chans=1, img_size=48, batch_size=64)
    work = training_work(args)
    assert work.training and work.input_size == (1, 48, 48) and work.batch == 8
    assert training_work(argparse.Namespace(**{**vars(args), 'mixed_precision': 'no'})) is None
    assert training_work(argparse.Namespace(**{**vars(args), 'model': 'local-dir:/x'})) is None
    # nothing would be measured: no model is built for the probe
    monkeypatch.setenv('FISHZOO_PRECISION_PROBE', 'off')
    assert training_work(args) is None
    monkeypatch.setenv('FISHZOO_PRECISION_PROBE', 'on')
    fake_cpu('vnni')
    assert training_work(args) is None
