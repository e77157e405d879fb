"""The package's layout holds: no import cycle among fishzoo's modules (imports inside functions count too),
the deployment package stays below the rest, and the lint configuration is clean."""
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


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []


def test_no_import_cycle_among_fishzoo_modules():
    graph = import_graph()
    assert graph['fishzoo.deploy.export'] >= {'fishzoo.deploy.runtime', 'fishzoo.deploy.int8_exported'}
    assert 'fishzoo.metrics' in graph['fishzoo.deploy.int8_exported']  # imports inside functions are seen too
    assert find_cycle(graph) == []


def test_deployment_runtime_is_the_bottom_layer():
    graph = import_graph()
    deploy = {m for m in graph if m.startswith('fishzoo.deploy.')}
    assert not graph['fishzoo.deploy.runtime'] & deploy
    # nothing outside deployment and the top-level API needs the deployment package, except predict's runners
    # and the CLI
    users = {m for m, deps in graph.items() if deps & deploy and not m.startswith('fishzoo.deploy')}
    assert users <= {'fishzoo', 'fishzoo.predict', 'fishzoo.cli'}, users


def test_ruff_is_clean():
    """The rules in pyproject.toml ([tool.ruff]); .ci/run runs ruff before the tests as well."""
    proc = subprocess.run([sys.executable, '-m', 'ruff', 'check', str(REPO)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
