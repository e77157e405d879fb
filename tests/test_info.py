"""fishzoo info: models, folders and the machine."""
import json
import subprocess
import sys

import pytest

from fishzoo.cli import main
from fishzoo.train import main as train_main
from tests.helpers.hostile import one_line


def test_info_reads_folders_and_suggests_names(hub_folder, capsys):
    """`fishzoo info FOLDER` said "unknown model" while predict, export and demo take folders; a misspelt
    name got no suggestion."""
    _, folder = hub_folder
    assert main(['info', str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'{folder} (fishnet_s64)') and 'labels:       a, b, c' in out and '(3 classes)' in out
    # a trained folder said "pretrained: none"
    assert "weights:      this folder's own; fishnet_s64's published tags: none" in out and 'pretrained:' not in out
    assert main(['info', 'fishnet_99']) == 2
    one_line(capsys, "unknown model 'fishnet_99'; did you mean fishnet99")
    assert train_main(['--model', 'fishnet_99', '--output-dir', str(folder.parent / 'x'), '--epochs', '1']) == 2
    one_line(capsys, '--model fishnet_99: unknown model; did you mean fishnet99')


def test_info_json(capsys):
    assert main(['info', 'fishnet150', '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['params'] == 24_959_400
    assert info['gmacs'] == pytest.approx(6.40, abs=0.01)
    assert [f['reduction'] for f in info['feature_info']] == [2, 4, 8, 16, 32]
    assert isinstance(info['pretrained_tags'], list)


def test_info_text(capsys):
    assert main(['info', 'fishnet_s64']) == 0
    out = capsys.readouterr().out
    assert 'params:' in out and 'GMACs:' in out and 'stride 8: 528 ch' in out


def test_unknown_model_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, '-m', 'fishzoo.cli', 'info', 'fishnet999'],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fishzoo info: unknown model 'fishnet999'; did you mean fishnet99?; `fishzoo list` shows the available "
        'models, and a folder or hf-hub:REPO_ID is read too']


def test_table_check_missing_markers(tmp_path, capsys):
    readme = tmp_path / 'README.md'
    readme.write_text('# no table here\n')
    assert main(['table', '--check', str(readme)]) == 2
    assert 'no models table markers' in capsys.readouterr().err


def test_info_without_a_model_describes_the_machine(fake_cpu, capsys):
    fake_cpu('avx512_bf16')
    assert main(['info']) == 0
    out = capsys.readouterr().out
    assert 'CPU features: AVX512-BF16, VNNI (from' in out
    # the old rule (fp32 without AMX) came from an emulation; measured, this CPU kind runs bf16 at 2.05x
    assert 'auto precision (inference, CPU training; a model is probed on first use): bf16: bf16 2.05x fp32 ' \
           '(table: AMD EPYC with AVX512-BF16, no AMX' in out
    fake_cpu('vnni')
    assert main(['info']) == 0
    assert 'fp32: this CPU has no bf16 instructions' in capsys.readouterr().out
    fake_cpu('amx')
    assert main(['info', '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['cpu_features'] == ['AMX-BF16', 'AMX-INT8', 'AVX512-BF16', 'VNNI']
    assert info['auto_precision'] == 'bf16' and info['cores'] >= 1


def test_machine_summary_names_the_features(fake_cpu):
    from fishzoo.info import machine_summary
    fake_cpu('amx')
    assert '(AMX-BF16, AMX-INT8, AVX512-BF16, VNNI)' in machine_summary()
