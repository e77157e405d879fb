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


DOCS = sorted((REPO / 'docs').glob('*.md'))
NAME = re.compile(r'\bfishzoo(?:\.[A-Za-z_][A-Za-z0-9_]*)+')


def _resolves(name: str) -> bool:
    """``name`` is an importable module, or an attribute path inside one."""
    import importlib
    parts = name.split('.')
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_readme_links_to_docs_that_exist():
    links = re.findall(r'\]\((docs/[^)#]+)', README)
    assert links and all((REPO / link).is_file() for link in links), links
    assert {REPO / link for link in links} == set(DOCS)  # every doc is reachable from the README


def test_names_in_the_docs_and_the_package_exist():
    """``fishzoo.x.y`` named in the README, docs/ (but the table of moved modules) and fishzoo's own messages
    and docstrings: each an importable module or attribute."""
    texts = {'README.md': README}
    for doc in DOCS:
        text = doc.read_text()
        texts[f'docs/{doc.name}'] = text.split('## Moved modules')[0]
    for path in (REPO / 'fishzoo').rglob('*.py'):
        texts[str(path.relative_to(REPO))] = path.read_text()
    missing = sorted({f'{where}: {name}' for where, text in texts.items() for name in NAME.findall(text)
                      if not _resolves(name)})
    assert not missing, missing


def test_the_files_readme_commands_read_exist():
    """The README's predict commands read digit.png, which existed nowhere: a newcomer's paste failed."""
    images = re.findall(r'[\w./-]+\.(?:png|jpg|jpeg)\b', README)
    assert images and all((REPO / image).is_file() for image in images if not image.startswith(('path/', 'http'))), \
        images
