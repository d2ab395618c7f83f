"""The layout's rules, checked on the source tree (the README's "Architecture" section states them).

- Layers point one way: ``textenv`` <- ``rewardmodels`` <- ``agents``.
- No import cycle between modules, counting imports inside functions too.
- No source file over 600 lines, no function over 80 lines of code.
- Atomic replacement of files (``os.replace``) written in one place (``textenv/files.py``).
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("textenv", "rewardmodels", "agents")
LAYER = {name: i for i, name in enumerate(PACKAGES)}  # a module may import only from its own layer or lower ones
MAX_FILE_LINES = 600
MAX_FUNCTION_CODE_LINES = 80


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path, name: str) -> set[str]:
    """Project modules that ``path`` imports anywhere (top level or inside functions), resolved to module names:
    ``from a.b import c`` counts as ``a.b.c`` when that is a module, else ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for imported in names:
            while imported and imported not in MODULES:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                out.add(imported)
    return out


GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}


def test_the_tree_is_what_this_test_reads():
    assert {"textenv.engine", "rewardmodels.ensemble", "agents.loop.preference_loop", "agents.llm.ppo"} <= set(GRAPH)


def test_layers_point_one_way():
    wrong = [f"{name} imports {dep}" for name, deps in GRAPH.items() for dep in deps
             if LAYER[dep.split(".")[0]] > LAYER[name.split(".")[0]]]
    assert not wrong, "a lower layer imports a higher one:\n" + "\n".join(sorted(wrong))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_even_through_function_level_imports():
    cycles = _cycles(GRAPH)  # a package's __init__ importing its submodules counts: a submodule must not import it
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _code_lines(source: str, node: ast.AST) -> int:
    """Lines of ``node`` that hold code: not blank, not only a comment, not its docstring."""
    lines = set(range(node.lineno, node.end_lineno + 1))
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        lines -= set(range(body[0].lineno, body[0].end_lineno + 1))
    code: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER):
            code.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines & code)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_file_and_function_sizes(name):
    path = MODULES[name]
    source = path.read_text(encoding="utf-8")
    n_lines = source.count("\n")
    assert n_lines <= MAX_FILE_LINES, f"{path.relative_to(ROOT)} has {n_lines} lines (> {MAX_FILE_LINES}): split it"
    long = [f"{node.name} ({_code_lines(source, node)} lines of code, line {node.lineno})"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and _code_lines(source, node) > MAX_FUNCTION_CODE_LINES]
    assert not long, f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_CODE_LINES} lines of code: {long}"


def test_code_line_counter_skips_docstrings_comments_and_blanks():
    source = 'def f():\n    """Doc.\n\n    More."""\n    # a comment\n\n    x = 1\n    return (x +\n            1)\n'
    assert _code_lines(source, ast.parse(source).body[0]) == 4  # def, x = 1, and the two lines of the return


def test_atomic_replacement_is_written_once():
    users = defaultdict(int)
    for path in MODULES.values():
        users[path.relative_to(ROOT).as_posix()] += path.read_text(encoding="utf-8").count("os.replace(")
    places = {p: n for p, n in users.items() if n}
    assert set(places) <= {"textenv/files.py"} and sum(places.values()) <= 2, places
