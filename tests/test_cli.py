import json
import subprocess
import sys

import pytest

import fishzoo
from fishzoo.cli import main


def test_list(capsys):
    assert main(['list']) == 0
    assert capsys.readouterr().out.split() == fishzoo.list_models()
    assert main(['list', '*64']) == 0
    assert capsys.readouterr().out.split() == ['fishnet_l64', 'fishnet_m64', 'fishnet_s64']


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
