"""BENCHMARKS.md is the front page: every command on it must still run as written, and it stays short.

A command is a code span, or a line of a fenced block, whose first word (after `VAR=value` assignments and
`time`) is `python`, `nextrl` or `torchrun`. For a bench script the check runs the script's own argparse on
the command's arguments and stops right after parsing (`parse_args` is patched to raise), so a missing
script, a flag the script no longer has or a value of the wrong type fails here; `nextrl <command>` goes
through the CLI's click parser the same way. `--preset` must name a shipped preset (or a YAML file) and
`--set` keys must exist in the config schema (`load_config`). `python -c` code must compile and its imports
resolve; `python -m pytest` paths must exist.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import io
import os
import re
import runpy
import shlex
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "BENCHMARKS.md"
HISTORY = ROOT / "docs" / "benchmarks-history.md"
MAX_LINES = 160
PROGRAMS = {"python", "python3", "nextrl", "torchrun"}
SEPARATORS = {"&&", "||", ";", "|"}
REDIRECTS = re.compile(r"^\d?(>>?|<)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PYTEST_VALUE_OPTIONS = {"-k", "-m", "-p", "-c", "-o", "--deselect", "--ignore", "--rootdir", "--maxfail"}


# ---- finding the commands ------------------------------------------------------------------------------


def snippets_in(markdown: str) -> list[str]:
    """Code spans outside fenced blocks, and the lines of fenced blocks with `\\` continuations joined."""
    snippets, in_block, pending = [], False, ""
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            snippets += re.findall(r"`([^`]+)`", line)
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        snippets.append(pending.strip())
        pending = ""
    return snippets


def _strip_prefix(words: list[str]) -> list[str]:
    """Drop what runs before the program: `VAR=value` assignments, `env`, `time` / `/usr/bin/time -v`."""
    i = 0
    while i < len(words):
        if ASSIGNMENT.match(words[i]) or words[i] == "env":
            i += 1
        elif words[i] in ("time", "/usr/bin/time"):
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 1
        else:
            break
    return words[i:]


def _segments(words: list[str]) -> list[list[str]]:
    """The simple commands of a shell line, each without its redirections (`> file` and what follows)."""
    segments, current, redirected = [], [], False
    for word in words:
        if word in SEPARATORS:
            segments.append(current)
            current, redirected = [], False
        elif REDIRECTS.match(word):
            redirected = True
        elif not redirected:
            current.append(word)
    return [*segments, current]


def commands_in(markdown: str) -> list[list[str]]:
    """Every command on a page as an argv list; a snippet that looks like a command but is not valid shell
    comes back as ["<unparsable>", snippet] so that the check reports it."""
    commands = []
    for snippet in snippets_in(markdown):
        try:
            words = shlex.split(snippet, comments=True)
        except ValueError:
            head = _strip_prefix(snippet.split())[:1]
            if head and head[0] in PROGRAMS:
                commands.append(["<unparsable>", snippet])
            continue
        for segment in _segments(words):
            argv = _strip_prefix(segment)
            if argv and argv[0] in PROGRAMS:
                commands.append(argv)
    return commands


# ---- checking one command ------------------------------------------------------------------------------


class _Parsed(BaseException):
    """Raised by the patched parse_args once a script's arguments parsed (BaseException: no script's
    `except Exception` can swallow it)."""


def _parse_only(script: Path, args: list[str]) -> str | None:
    """Run a script up to its argparse call with these arguments; None if they parse, else argparse's error."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    saved_argv, saved_path, saved_env = sys.argv, list(sys.path), dict(os.environ)
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.parent))
    errors = io.StringIO()
    try:
        with (
            mock.patch.object(argparse.ArgumentParser, "parse_args", parse_and_stop),
            redirect_stderr(errors),
            redirect_stdout(io.StringIO()),
        ):
            runpy.run_path(str(script), run_name="__main__")
    except _Parsed:
        return None
    except SystemExit:
        lines = errors.getvalue().strip().splitlines()
        return lines[-1] if lines else "exited while parsing its arguments"
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.environ.clear()
        os.environ.update(saved_env)
    return "finished without parsing any arguments"


def _check_script(script: str, args: list[str]) -> list[str]:
    path = ROOT / script
    if not path.is_file():
        return [f"names a missing script {script}"]
    error = _parse_only(path, args)
    return [f"{script}: {error}"] if error else []


def _check_cli(args: list[str]) -> list[str]:
    import typer
    from typer.main import get_command

    from nextrl.cli import app

    group = get_command(app)
    if not args or args[0] not in group.commands:
        return [f"nextrl has no command {args[:1]}"]
    try:
        group.commands[args[0]].make_context(args[0], list(args[1:]))
    except typer.Exit:
        pass
    except typer.TyperException as e:  # typer's own click: a usage error, a bad value, a missing option
        return [f"nextrl {args[0]}: {e.format_message() if hasattr(e, 'format_message') else e}"]
    return []


def _check_inline(code: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return [f"python -c: {e}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            problems += [f"{node.module} has no {a.name}" for a in node.names if not hasattr(module, a.name)]
        elif isinstance(node, ast.Import):
            problems += [
                f"no module {a.name}" for a in node.names if importlib.util.find_spec(a.name) is None
            ]
    return problems


def _check_module(module: str, args: list[str]) -> list[str]:
    if importlib.util.find_spec(module) is None:
        return [f"python -m: no module {module}"]
    if module != "pytest":
        return []
    paths, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = arg in PYTEST_VALUE_OPTIONS
            continue
        paths.append(arg.split("::")[0])
    return [f"pytest: no test path {p}" for p in paths if not (ROOT / p).exists()]


def _check_python(args: list[str]) -> list[str]:
    if not args:
        return ["python without a script"]
    if args[0] == "-c":
        return _check_inline(args[1]) if len(args) > 1 else ["python -c without code"]
    if args[0] == "-m":
        return _check_module(args[1], args[2:]) if len(args) > 1 else ["python -m without a module"]
    return _check_script(args[0], args[1:])


def _check_presets_and_overrides(args: list[str]) -> list[str]:
    """`--preset X` must exist; `--set key=value` keys must be config keys (load_config validates them)."""
    from nextrl.config import ConfigError, available_presets, load_config

    preset, overrides = None, []
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--preset":
            preset = value
        elif flag == "--set":
            overrides.append(value)
    if preset and preset not in available_presets() and not (ROOT / preset).is_file():
        return [f"no preset {preset!r} (shipped: {', '.join(available_presets())})"]
    try:
        load_config(preset or "tiny", overrides)
    except ConfigError as e:
        return [str(e)]
    return []


def check_command(argv: list[str]) -> list[str]:
    """What is wrong with one command of the page; [] when it would run as written."""
    program, args = argv[0], argv[1:]
    if program == "<unparsable>":
        return [f"not valid shell: {args[0]}"]
    if program == "nextrl":
        problems = _check_cli(args)
    elif program == "torchrun":
        scripts = [i for i, a in enumerate(args) if a.endswith(".py")]
        problems = (
            _check_script(args[scripts[0]], args[scripts[0] + 1 :]) if scripts else ["torchrun: no script"]
        )
    else:
        problems = _check_python(args)
    return problems + _check_presets_and_overrides(args)


def page_problems(markdown: str) -> list[str]:
    """Every problem of every distinct command on a page, each naming its command."""
    distinct = dict.fromkeys(tuple(argv) for argv in commands_in(markdown))
    return [f"`{shlex.join(argv)}`: {p}" for argv in distinct for p in check_command(list(argv))]


# ---- the page ------------------------------------------------------------------------------------------


def test_the_front_page_stays_short_and_points_at_the_history():
    text = PAGE.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES, f"BENCHMARKS.md has {len(text.splitlines())} lines"
    assert "docs/benchmarks-history.md" in text and HISTORY.is_file()


def test_every_command_on_the_front_page_runs_as_written():
    commands = commands_in(PAGE.read_text(encoding="utf-8"))
    assert len(commands) >= 10, commands  # the page quotes more than that: an empty list means a parser bug
    assert page_problems(PAGE.read_text(encoding="utf-8")) == []


def test_every_row_of_a_command_table_has_a_date():
    header, dated, in_table = None, [], False
    for row in PAGE.read_text(encoding="utf-8").splitlines():
        if not row.startswith("|"):
            in_table = False  # a table ends at its first line that is not a row
            continue
        cells = [c.strip() for c in row.strip("|").split("|")]
        if not in_table:  # a table's first row is its header
            in_table, header = True, (cells if "command" in cells and "date" in cells else None)
        elif header and not set(row) <= set("|- ") and len(cells) == len(header):
            dated.append(re.search(r"\d{4}-\d{2}-\d{2}", cells[header.index("date")]) is not None)
    assert dated and all(dated)


# ---- the checker itself, on fabricated lines -----------------------------------------------------------


def test_commands_are_found_in_spans_and_blocks_and_nothing_else():
    page = (
        "| a | `OMP_NUM_THREADS=1 python bench/fsdp_memory.py --ranks 1 2` | `model.path=x` | `__eq__` |\n"
        "Run `/usr/bin/time -v nextrl run --preset micro --out runs/x` or `pip install x && nextrl presets`.\n"
        "```bash\npython bench/thought_formats.py --data c4 \\\n    --positions 8   # a comment\n```\n"
    )
    assert commands_in(page) == [
        ["python", "bench/fsdp_memory.py", "--ranks", "1", "2"],
        ["nextrl", "run", "--preset", "micro", "--out", "runs/x"],
        ["nextrl", "presets"],
        ["python", "bench/thought_formats.py", "--data", "c4", "--positions", "8"],
    ]
    assert page_problems(page) == []


@pytest.mark.parametrize(
    "line, names",
    [
        ("`python bench/no_such_bench.py --steps 1`", "no_such_bench.py"),
        ("`python bench/rl_step.py --contexts 512 --no-such-flag`", "--no-such-flag"),
        ("`python bench/rl_step.py --contexts five`", "--contexts"),
        ("```\nOMP_NUM_THREADS=1 python bench/fsdp_memory.py \\\n  --ranks 2 --no-such 2\n```", "--no-such"),
        ("`nextrl run --no-such-flag`", "--no-such-flag"),
        ("`nextrl no-such-command`", "no-such-command"),
        ("`nextrl run --preset no-such-preset`", "no-such-preset"),
        ("`python bench/main_job.py --preset control --set rl.no_such_key=1`", "rl.no_such_key"),
        ('`python -c "from nextrl.config import no_such_name"`', "no_such_name"),
        ("`python -m pytest tests/test_no_such_file.py -k x`", "test_no_such_file.py"),
        ("`python bench/main_job.py --set 'unclosed`", "not valid shell"),
    ],
)
def test_a_command_that_would_not_run_is_reported(line, names):
    problems = page_problems(line)
    assert len(problems) == 1 and names in problems[0], problems
