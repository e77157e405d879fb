"""The README stays true: its two opening commands are what CI runs, and its tables are generated."""
import re
from pathlib import Path

from fishzoo.info import models_table, replace_readme_table

REPO = Path(__file__).resolve().parents[1]
README = (REPO / 'README.md').read_text()


def _opening_commands():
    return re.findall(r'```bash\n(.+?)\n```', README)[:2]


def test_readme_opens_with_main_job_and_test_commands():
    main_job, tests = _opening_commands()
    assert 'pip install' in main_job and 'pip install' in tests and 'pytest' in tests
    assert README.index(main_job) < README.index('## ')  # before the first section


def test_ci_runs_exactly_the_readme_commands():
    ci = (REPO / '.ci' / 'run').read_text().splitlines()
    for command in _opening_commands():
        assert command in ci, command


def test_models_table_is_generated():
    assert replace_readme_table(README, models_table()) == README, 'run `fishzoo table --write README.md`'
