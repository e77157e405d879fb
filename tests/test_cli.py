"""The fishzoo command: its subcommands and the one-line, exit-2 convention for mistakes."""
import fishzoo
from fishzoo.cli import main


def test_list(capsys):
    assert main(['list']) == 0
    assert capsys.readouterr().out.split() == fishzoo.list_models()
    assert main(['list', '*64']) == 0
    assert capsys.readouterr().out.split() == ['fishnet_l64', 'fishnet_m64', 'fishnet_s64']
