"""The package's layout holds: no import cycle among fishzoo's modules (imports inside functions count too),
none between its packages counted as one node each, the hub below the models, deployment one module per
format, precision decided in one place, and the lint configuration is clean."""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'fishzoo'


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_graph() -> Dict[str, Set[str]]:
    """fishzoo module -> the fishzoo modules it imports anywhere in its file (top level or inside a function).

    ``from fishzoo.a import b`` counts as an import of ``fishzoo.a.b`` when that is a module, else of
    ``fishzoo.a``; a parent package's ``__init__`` is not counted as imported by its submodules' import.
    """
    files = {_module_name(p): p for p in PACKAGE.rglob('*.py')}
    graph: Dict[str, Set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == '__init__.py' else name.rpartition('.')[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    anchor = package.split('.')
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = '.'.join(anchor + ([base] if base else []))
                targets = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in files else base
                           for alias in node.names]
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules (first == last), or [] when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


PACKAGES = ('models', 'hub', 'deploy', 'train')  # fishzoo's subpackages


def package_of(module: str) -> str:
    """The node ``module`` belongs to when packages are counted as one: ``fishzoo.deploy.onnx`` ->
    ``fishzoo.deploy``; top-level modules (``fishzoo.loading``) and the root stand for themselves."""
    parts = module.split('.')
    return '.'.join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and parts[1] in PACKAGES) else module


def package_graph(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    """The import graph with every subpackage as one node; a package's imports among its own modules drop out."""
    condensed: Dict[str, Set[str]] = {}
    for module, deps in graph.items():
        node = package_of(module)
        condensed.setdefault(node, set()).update(package_of(d) for d in deps)
    for node, deps in condensed.items():
        deps.discard(node)
    return condensed


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []


def test_packages_count_as_one_node():
    graph = {'fishzoo.hub.folder': {'fishzoo.models._builder'}, 'fishzoo.models._builder': {'fishzoo.hub.schema'},
             'fishzoo.hub.schema': set(), 'fishzoo.loading': {'fishzoo.hub.folder'}, 'fishzoo.hub': set()}
    condensed = package_graph(graph)
    assert condensed == {'fishzoo.hub': {'fishzoo.models'}, 'fishzoo.models': {'fishzoo.hub'},
                         'fishzoo.loading': {'fishzoo.hub'}}
    assert find_cycle(condensed) == ['fishzoo.hub', 'fishzoo.models', 'fishzoo.hub']  # the arrow back up


def test_no_import_cycle_among_fishzoo_modules():
    graph = import_graph()
    assert graph['fishzoo.deploy.export'] >= {'fishzoo.deploy.formats', 'fishzoo.deploy.runner'}
    assert 'fishzoo.metrics' in graph['fishzoo.deploy.accuracy']
    assert 'fishzoo.hub.atomic' in graph['fishzoo.deploy.export']
    assert find_cycle(graph) == []


def test_no_import_runs_back_up_between_packages():
    """Counting each subpackage as one node, no package imports a package that imports it."""
    graph = package_graph(import_graph())
    assert 'fishzoo.hub' in graph['fishzoo.models']  # imports inside functions are seen too
    assert find_cycle(graph) == []


def test_the_hub_package_sits_below_the_models():
    graph = package_graph(import_graph())
    below = {'fishzoo.errors', 'fishzoo.version', 'fishzoo._timm', 'fishzoo.complexity'}
    assert graph['fishzoo.hub'] <= below, graph['fishzoo.hub'] - below
    assert graph['fishzoo.models'] <= below | {'fishzoo.hub'}, graph['fishzoo.models']


def test_deployment_layers():
    graph = import_graph()
    deploy = {m for m in graph if m.startswith('fishzoo.deploy.')}
    # the shared bottom: a runner, the check against torch, what a format is
    assert graph['fishzoo.deploy.runner'] & deploy <= {'fishzoo.deploy.calibration'}
    # a format is one module: they never import each other, and only the table and export.py know them all
    formats = {f'fishzoo.deploy.{name}' for name in ('onnx', 'openvino', 'executorch', 'litert')}
    for module in formats:
        assert not graph[module] & (formats - {module}), module
    importers = {m for m, deps in graph.items() if deps & formats}
    # (and the fast path's choice of runtime, which runs OpenVINO in memory against the compiled torch model)
    assert importers <= {'fishzoo.deploy.formats', 'fishzoo.deploy.export', 'fishzoo.cli',
                         'fishzoo.deploy.backend_choice'}, importers
    # nothing outside deployment and the top-level API needs the deployment package, except predict's runners
    # and the CLI
    users = {m for m, deps in graph.items() if deps & deploy and not m.startswith('fishzoo.deploy')}
    assert users <= {'fishzoo', 'fishzoo.predict', 'fishzoo.cli'}, users


def test_precision_is_decided_in_one_module():
    """No module but the policy reads the CPU's bf16 units to pick a precision, or spells OpenVINO's 'f32'."""
    for path in PACKAGE.rglob('*.py'):
        if path.name in ('precision.py', 'precision_probe.py', 'cpu_features.py', 'info.py'):
            continue
        text = path.read_text()
        assert 'amx_bf16' not in text and "'f32'" not in text, path


def test_ruff_is_clean():
    """The rules in pyproject.toml ([tool.ruff]): the README's test command runs the linter here."""
    proc = subprocess.run([sys.executable, '-m', 'ruff', 'check', str(REPO)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
