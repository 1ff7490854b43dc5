"""Short functions: one over 60 lines either is split where a reader needs the parts or says in its docstring
why it is one piece ("One piece on purpose: ..."). Read from the source, so a new long function fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import nextrl

ROOT = Path(nextrl.__file__).parent
LIMIT = 60
REASON = "One piece on purpose"


def long_functions(path: Path) -> list[tuple[str, int, str | None]]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        (node.name, node.end_lineno - node.lineno + 1, ast.get_docstring(node))
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > LIMIT
    ]


def test_every_long_function_is_split_or_says_why_it_is_one_piece():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for name, lines, doc in long_functions(path):
            if REASON not in (doc or ""):
                bad.append(f"{rel}:{name} ({lines} lines)")
    assert not bad, f"functions over {LIMIT} lines without '{REASON}: <why>' in the docstring:\n" + "\n".join(
        bad
    )


def test_the_check_catches_a_long_function(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n" + "    x = 1\n" * LIMIT)
    [(name, lines, doc)] = long_functions(f)
    assert name == "f" and lines == LIMIT + 1 and doc is None
