"""The package's shape: no import cycle among diffdiff's modules, every module says what it owns.

Imports are read with ``ast`` (module level and inside functions alike), so a cycle hidden behind
a function-level import fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffdiff"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def import_graph() -> dict[str, set[str]]:
    """Module -> the diffdiff modules it imports (``from . import x`` counts as importing ``x``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module) if node.level else (node.module or "")
                # ``from . import x`` imports the submodule x; its parent package is being imported anyway.
                targets = ([base] if node.module else []) + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_among_diffdiff_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_function_level_cycle(tmp_path: Path) -> None:
    """The checker itself: a cycle made only of function-level imports is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    # And the parser sees imports inside functions.
    mod = ast.parse("def f():\n    from .editor import Editor\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "editor" for n in ast.walk(mod))


def test_tools_do_not_import_the_editor() -> None:
    """Fan, soft-inpainting, crop, DiffEdit and the families depend on a protocol, not on editor.py.

    Only the applications on top (CLI, web app, batch runner) import the editor.
    """
    graph = import_graph()
    users = {m for m, deps in graph.items() if "diffdiff.editor" in deps}
    applications = ("diffdiff.cli.", "diffdiff.web.", "diffdiff.batch")
    assert all(m.startswith(applications) for m in users - {"diffdiff"}), users  # the package re-exports Editor


@pytest.mark.parametrize("name", sorted(_modules()))
def test_every_module_says_what_it_owns(name: str) -> None:
    tree = ast.parse(_modules()[name].read_text())
    doc = ast.get_docstring(tree)
    assert doc and len(doc.split()) >= 5, f"{name} has no docstring saying what it owns"


def test_cli_help_does_not_import_torch() -> None:
    """``diffdiff --help`` starts without torch/diffusers (the package's names load on first use)."""
    import subprocess
    import sys

    code = ("import sys\nfrom typer.testing import CliRunner\nfrom diffdiff.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0 and 'edit' in r.output\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    import click

    out = []
    for name, cmd in getattr(group, "commands", {}).items():
        out += _commands(cmd, (*path, name)) if isinstance(cmd, click.Group) else [((*path, name), cmd)]
    return out


def test_every_option_help_is_shown_whole() -> None:
    """Rich markup eats a bracketed "[default: x]" in a help text (``--model`` once read "... file ."):
    every option's help, as written, appears whole in its command's ``--help``."""
    import re

    import typer
    from typer.testing import CliRunner

    from diffdiff.cli import app

    group = typer.main.get_command(app)
    commands = _commands(group)
    assert len(commands) >= 8, [c for c, _ in commands]
    for path, cmd in commands:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0, (path, result.output)
        shown = re.sub(r"[│\s]+", " ", result.output)
        for param in cmd.params:
            text = getattr(param, "help", None)
            if text:
                assert " ".join(text.split()) in shown, (path, param.name, text)
