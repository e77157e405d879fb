"""What installs fishzoo stays consistent: the lock the README's test command uses satisfies pyproject.toml, the
compatibility job installs pyproject's lower bounds, the README says which, and LiteRT stays out of the test
extra (its pins sent pip's resolver into resolution-too-deep)."""
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']


def _requirements(extra: str = None):
    """The requirements of the base install, or of an extra with the fishzoo[...] extras it names expanded."""
    found = [Requirement(r) for r in (PROJECT['optional-dependencies'][extra] if extra else PROJECT['dependencies'])]
    out = []
    for req in found:
        if canonicalize_name(req.name) == 'fishzoo':
            for sub in req.extras:
                out += _requirements(sub)
        else:
            out.append(req)
    return out


def _pins(path: Path):
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith('#'):
            name, _, version = line.partition('==')
            pins[canonicalize_name(name)] = version
    return pins


def test_the_test_lock_satisfies_pyproject():
    pins = _pins(REPO / 'constraints' / 'test.txt')
    for req in _requirements() + _requirements('test'):
        name = canonicalize_name(req.name)
        assert name in pins, f'{name} is not in constraints/test.txt: run .ci/lock'
        assert req.specifier.contains(pins[name], prereleases=True), \
            f'constraints/test.txt pins {name}=={pins[name]}, pyproject.toml asks {req}: run .ci/lock'


def test_litert_stays_out_of_the_test_environment():
    test = {canonicalize_name(r.name) for r in _requirements('test')}
    litert = {canonicalize_name(r.name) for r in _requirements('test-litert')}
    assert 'litert-torch' not in test and 'litert-torch' in litert
    assert 'litert-torch' not in _pins(REPO / 'constraints' / 'test.txt')
    pins = _pins(REPO / 'constraints' / 'test-litert.txt')
    for req in _requirements('test-litert'):
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), req


def test_the_compatibility_job_installs_the_lower_bounds_the_readme_names():
    proc = subprocess.run([sys.executable, str(REPO / '.ci' / 'oldest-constraints.py')], capture_output=True,
                          text=True, check=True)
    oldest = dict(line.split('==') for line in proc.stdout.split())
    direct = [Requirement(r) for r in PROJECT['dependencies'] + PROJECT['optional-dependencies']['test']]
    bounds = {canonicalize_name(r.name): str(s.version) for r in direct for s in r.specifier if s.operator == '>='}
    assert {canonicalize_name(k): v for k, v in oldest.items()} == \
        {k: bounds[k] for k in map(canonicalize_name, oldest)}
    readme = (REPO / 'README.md').read_text()
    for name, version in oldest.items():
        row = re.search(rf'^\| {name} \| ([^|]+) \|', readme, re.MULTILINE)
        assert row and row.group(1).strip().split()[0] == version, f'README "Tested with": {name} {version}'
