"""The package's shape: imports run downward, with no circle, and no module or class grows past a reader's screen.

Every import counts, at the top of a module, inside a function or under ``TYPE_CHECKING``: a circle hidden
behind a function-level import is still a circle (the rooms are described in agent/__init__.py).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

FOLDERS = {"agent": "vibrawatch.agent", "train": "vibrawatch.train", "convert": "vibrawatch.convert",
           "monitor": "vibrawatch.monitor"}
# The agent's rooms, lowest first: a module may import its own room or a lower one. sources and link share a
# rank but neither may import the other. The bottom room is the modules beside the folders that every room uses.
BOTTOM = ("errors", "sections", "files")
RANK = {"bottom": 0, "detect": 1, "sources": 2, "link": 2, "model": 3, "top": 4}
PACKAGE_RANK = {"vibrawatch.agent": 0, "vibrawatch.train": 1, "vibrawatch.convert": 2, "vibrawatch.monitor": 1}
MODULE_LINES, CLASS_LINES = 400, 150


def modules() -> dict[str, Path]:
    """Every module of the installed package, by its dotted name."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            out[name.removesuffix(".__init__")] = path
    return out


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """The package's own modules ``name`` imports (anywhere in the file), with the line of each import."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # vibrawatch.agent.detect.features.extract -> ...features
                t = t.rpartition(".")[0]
            if t and t != name:
                yield t, node.lineno


def graph() -> dict[str, dict[str, int]]:
    known = modules()
    return {name: dict(imported(name, path, known)) for name, path in known.items()}


def room(module: str) -> str:
    parts = module.split(".")
    if parts[1] != "agent" or len(parts) == 2:
        return "top"
    if parts[2] in BOTTOM:
        return "bottom"
    return parts[2] if parts[2] in RANK else "top"


def test_no_import_circle_anywhere_in_the_package() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in g[n]:
            if state.get(m) == 1:
                circles.append([*path[path.index(m):], m])
            elif m not in state:
                visit(m, [*path, m])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_agent_rooms_import_only_downward() -> None:
    wrong = []
    for n, targets in graph().items():
        if not n.startswith("vibrawatch.agent"):
            continue
        for t, line in targets.items():
            if not t.startswith("vibrawatch.agent"):
                wrong.append(f"{n}:{line} imports {t}: the agent never imports the workstation's packages")
                continue
            a, b = room(n), room(t)
            if RANK[b] > RANK[a] or (RANK[a] == RANK[b] and a != b):
                wrong.append(f"{n}:{line} ({a}) imports {t} ({b})")
    assert not wrong, "\n".join(wrong)


def test_the_packages_import_each_other_only_downward() -> None:
    """train, convert and monitor may import the agent; convert may import train; the agent none of them."""
    wrong = []
    for n, targets in graph().items():
        pa = ".".join(n.split(".")[:2])
        for t, line in targets.items():
            pb = ".".join(t.split(".")[:2])
            if pa != pb and PACKAGE_RANK[pb] >= PACKAGE_RANK[pa]:
                wrong.append(f"{n}:{line} imports {t}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_hidden_circle(tmp_path: Path) -> None:
    """The walk finds an import inside a function and under TYPE_CHECKING, relative at any depth."""
    pkg = tmp_path / "p" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "p" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from ..b import thing\n")
    (tmp_path / "p" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                         "    from .sub import a\n")
    known = {"p": tmp_path / "p" / "__init__.py", "p.sub": pkg / "__init__.py", "p.sub.a": pkg / "a.py",
             "p.b": tmp_path / "p" / "b.py"}
    assert dict(imported("p.sub.a", known["p.sub.a"], known)) == {"p.b": 2}
    assert dict(imported("p.b", known["p.b"], known)) == {"p.sub.a": 3}


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_no_class_longer_than_a_screen_or_two(folder: str) -> None:
    long = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > CLASS_LINES:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: "
                            f"{node.end_lineno - node.lineno + 1} lines")
    assert not long, f"classes over {CLASS_LINES} lines:\n" + "\n".join(long)


def test_no_agent_module_over_400_lines() -> None:
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted((ROOT / "agent").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MODULE_LINES]
    assert not long, f"agent modules over {MODULE_LINES} lines:\n" + "\n".join(long)


def test_every_agent_room_says_what_it_holds_and_may_import() -> None:
    for sub in ("detect", "sources", "link", "model"):
        doc = ast.get_docstring(ast.parse((ROOT / "agent" / sub / "__init__.py").read_text())) or ""
        assert "May import" in doc and len(doc) > 200, sub
