"""The import structure of the repository: one-way layers, no cycles inside the library.

Every ``import`` statement counts, at module level and inside functions (a function-level import
hides a cycle, it does not remove it); only imports under ``if TYPE_CHECKING:`` are left out,
because they never run. The rules (docs/architecture.md):

- ``fima_models`` imports neither ``train`` nor ``hub`` nor ``benchmarks`` nor ``tests``;
- ``train`` and ``hub`` import neither ``benchmarks`` nor ``tests``; ``hub`` does not import
  ``train``; ``benchmarks`` does not import ``tests``;
- no cycle among the modules of ``fima_models`` (a package's ``__init__`` importing its own
  submodules is how packages re-export, so that edge alone does not make a cycle);
- every module-level import of the library is the standard library or a runtime dependency that
  ``pyproject.toml`` declares (``pip install fima-models`` without extras must import it all).
"""
import ast
import re
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ('fima_models', 'train', 'hub', 'benchmarks', 'tests')
FORBIDDEN = {
    'fima_models': {'train', 'hub', 'benchmarks', 'tests'},
    'train': {'hub', 'benchmarks', 'tests'},
    'hub': {'train', 'benchmarks', 'tests'},
    'benchmarks': {'tests'},
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
        isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def _import_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking_block(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_names(path: Path, name: str) -> Set[str]:
    """Dotted names a module imports (``from a import b`` gives ``a`` and ``a.b``), relative ones resolved."""
    tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    names: Set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ''
        if node.level:
            anchor = package.split('.')
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = '.'.join(anchor + ([base] if base else []))
        names.add(base)
        names.update(f'{base}.{alias.name}' for alias in node.names)
    return names


def import_graph(root: Path, packages: tuple) -> Dict[str, Set[str]]:
    """Module -> the project modules it imports, for every ``.py`` file under ``packages``."""
    files = {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob('*.py'))}
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        targets = {n for n in imported_names(path, name) if n in files and n != name}
        if path.name == '__init__.py':
            targets = {t for t in targets if not t.startswith(name + '.')}
        graph[name] = targets
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def forbidden_imports(root: Path) -> List[str]:
    wrong = []
    for layer, banned in FORBIDDEN.items():
        for path in sorted((root / layer).rglob('*.py')):
            name = module_name(root, path)
            names = imported_names(path, name)
            outermost = {n for n in names if not any(n.startswith(other + '.') for other in names)}
            for target in sorted(outermost):
                if target.split('.')[0] in banned:
                    wrong.append(f'{path.relative_to(root)} imports {target}')
    return wrong


def test_library_has_no_import_cycle():
    found = cycles(import_graph(ROOT, ('fima_models',)))
    assert not found, 'import cycles in fima_models: ' + '; '.join(' <-> '.join(c) for c in found)


def test_layers_import_one_way():
    wrong = forbidden_imports(ROOT)
    assert not wrong, 'forbidden imports:\n' + '\n'.join(wrong)


def test_train_and_hub_have_no_import_cycle():
    found = cycles(import_graph(ROOT, ('train', 'hub')))
    assert not found, 'import cycles: ' + '; '.join(' <-> '.join(c) for c in found)


# --- the checks themselves must be able to fail ---------------------------------------------------------
def _write(root: Path, files: Dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding='utf-8')


@pytest.mark.parametrize('b_source', [
    'from pkg.a import x\n',                                  # module level
    'def f():\n    from pkg import a\n    return a\n',       # hidden in a function
    'from . import a\n',                                      # relative
])
def test_a_cycle_is_found(tmp_path, b_source):
    _write(tmp_path, {'pkg/__init__.py': '', 'pkg/a.py': 'from pkg.b import y\nx = 1\n', 'pkg/b.py': b_source})
    assert cycles(import_graph(tmp_path, ('pkg',))) == [['pkg.a', 'pkg.b']]


def test_type_checking_imports_and_package_reexports_are_not_cycles(tmp_path):
    _write(tmp_path, {
        'pkg/__init__.py': 'from .a import x\nfrom .b import y\n',
        'pkg/a.py': 'from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import y\nx = 1\n',
        'pkg/b.py': 'from pkg.a import x\ny = x\n',
    })
    assert cycles(import_graph(tmp_path, ('pkg',))) == []


def test_a_child_importing_its_package_that_imports_it_back_is_a_cycle(tmp_path):
    _write(tmp_path, {'pkg/__init__.py': 'from .sub import f\nfrom .a import g\n',
                      'pkg/sub/__init__.py': 'from pkg import a\nf = 1\n', 'pkg/a.py': 'import pkg.sub\ng = 2\n'})
    assert cycles(import_graph(tmp_path, ('pkg',))) == [['pkg.a', 'pkg.sub']]


def test_a_forbidden_arrow_is_found(tmp_path):
    _write(tmp_path, {'fima_models/__init__.py': '', 'fima_models/m.py': 'def f():\n    import train.pretrain\n',
                      'train/__init__.py': '', 'hub/__init__.py': '', 'benchmarks/b.py': 'from tests import media\n'})
    assert sorted(forbidden_imports(tmp_path)) == [
        'benchmarks/b.py imports tests', 'fima_models/m.py imports train.pretrain']


def _module_level_imports(path: Path) -> Set[str]:
    tree = ast.parse(path.read_text(encoding='utf-8'))
    names: Set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split('.')[0])
    return names


def test_library_imports_at_module_level_only_declared_dependencies():
    """``pip install fima-models`` (no extras) must be enough to import every library module."""
    tomllib = pytest.importorskip('tomllib', reason='tomllib needs Python 3.11')
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text(encoding='utf-8'))['project']
    declared = {re.split(r'[<>=!~ ;\[]', dep, maxsplit=1)[0].lower().replace('-', '_')
                for dep in project['dependencies']}
    wrong = []
    for path in sorted((ROOT / 'fima_models').rglob('*.py')):
        for top in sorted(_module_level_imports(path)):
            if top in sys.stdlib_module_names or top == 'fima_models' or top == '__future__':
                continue
            if top not in declared:
                wrong.append(f'{path.relative_to(ROOT)} imports {top} at module level')
    assert not wrong, 'not a runtime dependency in pyproject.toml:\n' + '\n'.join(wrong)
