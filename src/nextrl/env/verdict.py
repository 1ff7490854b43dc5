"""A pass/fail verdict on code that the code cannot forge: the tests are decided in the trusted process.

Threat model. The policy writes the solution and is rewarded when the tests pass, so it is rewarded for
whatever makes the tests *report* success: an object whose `__eq__` always answers True, a subclass of `int`
or `str` that compares equal to anything, `exit(0)` or `os._exit(0)` before the tests, a forged "passed"
line, monkeypatched builtins (`print`, `abs`, `AssertionError`, `sys.exit`) or a patched test harness. All
of these work when the tests run in the solution's process, because there the solution can reach the
comparison, the harness and the channel that reports the result.

So the sandboxed program never compares anything and never sees an expected value. The trusted process
parses the tests (`plan_tests`) into *probes*, the calls of the solution with their inputs
(`candidate([1.0, 2.0], 0.3)`), and *checks*, the rest of each `assert` with every probe replaced by a
placeholder (`_o0 == True`, `abs(_o0 - 3.5) < 1e-6`, `math.isclose(_o0, 2.0)`). The sandbox gets only the
solution and the probes (`harness`); it evaluates each probe and sends back the value as plain, type-tagged
data (`None`, `bool`, `int`, `float`, `complex`, `str`, `bytes`, `list`, `tuple`, `dict`, `set`,
`frozenset` and `collections`' `Counter`, `OrderedDict`, `defaultdict`, `deque`, exactly these types: a
subclass of `int` or any other object is sent as unencodable, and fails). The trusted process decodes the
values (`decode`: strictly, depth-limited) and evaluates the checks on them (`decide`) with a whitelist of
builtins: every operation runs on values of those types, built here, so no code of the solution runs here. The sandboxed process may still lie about its outputs, by any means, harness and channel
included, but it cannot know what to lie: the expected values never enter it. What it sends is at most what
a solution could have computed, which is the thing being measured.

Nor can it read them elsewhere: the code environment hides the problems file's folder from the sandbox
(`env.options.hide` for other copies), and the temporary folder, where the other programs' files are, is the
program's own tmpfs. What this does not stop: a solution that knows the answers (memorised tests, the
examples in the prompt's docstring written back, a copy of the data set left readable and not hidden); tests that are weak in themselves (`assert candidate(x) == candidate(y)` is passed
by a constant function, as it would be anywhere). A record whose tests are not plain `assert` lines over
calls of the solution (loops, local variables, helper functions of the tests, setup code the tests read)
cannot be split this way: `plan_tests` returns None and the code environment runs it the old way, tests in
the solution's process with a random sentinel printed after them, which a determined program can forge; such
records are counted (`tests_run_in_sandbox` in the task source's stats, a column of `bench/passk.py`).
"""

from __future__ import annotations

import ast
import builtins
import collections
import functools
import json
import math
from dataclasses import dataclass
from typing import Any

# Builtins the checks may call in the trusted process: pure functions of built-in values
TRUSTED_CALLS = {
    name: getattr(builtins, name)
    for name in [
        "abs",
        "all",
        "any",
        "bool",
        "complex",
        "dict",
        "divmod",
        "float",
        "frozenset",
        "int",
        "isinstance",
        "len",
        "list",
        "max",
        "min",
        "range",
        "repr",
        "reversed",
        "round",
        "set",
        "sorted",
        "str",
        "sum",
        "tuple",
        "zip",
    ]
}
# calls whose cost can grow without bound in an argument the program controls: not given its outputs
COSTLY_CALLS = {"range", "factorial", "comb", "perm", "pow"}
COSTLY_OPS = (ast.Mult, ast.Pow, ast.LShift, ast.MatMult)
CONVERTERS = {"list", "tuple", "set", "frozenset", "sorted", "dict"}  # may wrap a probe in the sandbox
TRUSTED_MODULES = {"math": math}
MAX_DEPTH = 64  # of a decoded value: far above any test's, far below the recursion limit
PLACEHOLDER = "_nextrl_o"
NO_OPS = (ast.Constant, ast.Name)  # statements of check() that do nothing
ALLOWED_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.UnaryOp,
    ast.BinOp, ast.BoolOp, ast.Compare, ast.Call, ast.keyword, ast.Attribute, ast.Subscript, ast.Slice,
    ast.IfExp, ast.Starred, ast.JoinedStr, ast.FormattedValue,
    ast.unaryop, ast.operator, ast.boolop, ast.cmpop,
)  # fmt: skip


class Undecomposable(Exception):
    """The tests are not plain asserts over calls of the solution; the message says what is in the way."""


@dataclass(frozen=True)
class Check:
    """One assert: `code` evaluates to its truth from the probes' values, bound to `_nextrl_o{i}`."""

    source: str
    code: Any  # a compiled expression
    probes: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """The probes the sandbox evaluates (Python expressions over the solution's names; no expected value) and
    the checks the trusted process decides. `bindings` are names the probes see besides the solution's own
    (`candidate`: the entry point; modules the tests imported)."""

    probes: tuple[str, ...]
    checks: tuple[Check, ...]
    entry_point: str | None
    imports: tuple[str, ...]


# ---------------------------------------------------------------- the trusted process: reading the tests


def plan_tests(record: dict[str, Any]) -> Plan | None:
    """The record's tests as probes and checks, or None when they cannot be decided outside the sandbox."""
    try:
        if "prompt" in record:  # HumanEval: `def check(candidate): assert ...`
            return _cached_plan("humaneval", record["test"], record["entry_point"], ())
        if record.get("test_setup_code"):
            raise Undecomposable("the tests read names the setup code defines")
        defined = tuple(sorted(_top_level_names(record.get("code") or "")))
        return _cached_plan("mbpp", "\n".join(record.get("test_list") or []), None, defined)
    except (Undecomposable, SyntaxError, KeyError, TypeError):
        return None


def why_not(record: dict[str, Any]) -> str | None:
    """Why `plan_tests` gives None for this record (for messages), or None when it gives a plan."""
    try:
        if "prompt" in record:
            _plan("humaneval", record["test"], record["entry_point"], ())
        else:
            if record.get("test_setup_code"):
                return "the tests read names the setup code defines"
            defined = tuple(sorted(_top_level_names(record.get("code") or "")))
            _plan("mbpp", "\n".join(record.get("test_list") or []), None, defined)
    except (Undecomposable, SyntaxError, KeyError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


@functools.lru_cache(maxsize=4096)
def _cached_plan(kind: str, test: str, entry: str | None, defined: tuple[str, ...]) -> Plan:
    return _plan(kind, test, entry, defined)


def _plan(kind: str, test: str, entry: str | None, defined: tuple[str, ...]) -> Plan:
    tree = ast.parse(test)
    if kind == "humaneval":
        asserts, imports = _check_body(tree)
        solution_names = {"candidate"}
    else:
        asserts, imports = _top_level_asserts(tree), ()
        # the names the tests call that the reference solution defines (one is called `sum`) or that are no
        # builtin; never taken from the completion, which could otherwise claim `abs` or `sorted` as its own
        called = {
            n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        solution_names = {n for n in called if n in defined or not hasattr(builtins, n)}
    probes: list[str] = []
    checks = []
    for node in asserts:
        first = len(probes)
        rest = _Splitter(solution_names, probes).visit(node.test)
        _check_trusted(rest)
        expr = ast.fix_missing_locations(ast.Expression(rest))
        checks.append(
            Check(ast.unparse(node.test), compile(expr, "<test>", "eval"), tuple(range(first, len(probes))))
        )
    if not probes:
        raise Undecomposable("no assert calls the solution")
    return Plan(tuple(probes), tuple(checks), entry, tuple(imports))


def _check_body(tree: ast.Module) -> tuple[list[ast.Assert], list[str]]:
    """The asserts of HumanEval's `check(candidate)`; its top level may hold only METADATA and imports."""
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            continue
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["METADATA"]:
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        raise Undecomposable(f"the test module holds `{ast.unparse(node)[:60]}`")
    if len(checks) != 1 or [a.arg for a in checks[0].args.args] != ["candidate"]:
        raise Undecomposable("no `def check(candidate)`")
    asserts, imports = [], []
    for node in checks[0].body:
        if isinstance(node, ast.Assert):
            asserts.append(node)
        elif isinstance(node, ast.Import) and all(
            a.name in TRUSTED_MODULES and a.asname is None for a in node.names
        ):
            imports += [a.name for a in node.names]
        elif not (
            isinstance(node, ast.Pass) or isinstance(node, ast.Expr) and isinstance(node.value, NO_OPS)
        ):  # a docstring, a bare `print` (HumanEval/129): nothing runs
            raise Undecomposable(f"check() holds `{ast.unparse(node)[:60]}`")
    return asserts, imports


def _top_level_asserts(tree: ast.Module) -> list[ast.Assert]:
    for node in tree.body:
        if not isinstance(node, ast.Assert):
            raise Undecomposable(f"the tests hold `{ast.unparse(node)[:60]}`")
    return list(tree.body)


@functools.lru_cache(maxsize=4096)
def _top_level_names(code: str) -> frozenset[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return frozenset()
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return frozenset(names)


class _Splitter(ast.NodeTransformer):
    """Replaces each call of the solution (with its arguments, and the converters around it: `list(f(x))`)
    by a placeholder, collecting the calls' source as probes. What is left runs in the trusted process."""

    def __init__(self, solution_names: set[str], probes: list[str]):
        self.solution_names, self.probes = solution_names, probes

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id in self.solution_names:
            self.probes.append(ast.unparse(node))
            return ast.Name(f"{PLACEHOLDER}{len(self.probes) - 1}", ast.Load())
        node = self.generic_visit(node)
        arg = node.args[0] if len(node.args) == 1 and not node.keywords else None
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in CONVERTERS
            and isinstance(arg, ast.Name)
            and arg.id == f"{PLACEHOLDER}{len(self.probes) - 1}"
        ):  # `list(map_object)` is only decodable when converted where it was made
            self.probes[-1] = f"{node.func.id}({self.probes[-1]})"
            return arg
        return node

    def visit_Lambda(self, node: ast.AST) -> ast.AST:
        raise Undecomposable("a lambda in an assert")

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_NamedExpr = visit_Lambda


def _check_trusted(tree: ast.AST) -> None:
    """The trusted part reads only placeholders, whitelisted builtins and `math`, and never hands the program's
    values to an operation whose cost they could blow up (`_o0 * _o1`, `range(_o0)`)."""
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED_NODES):
            raise Undecomposable(f"`{type(node).__name__}` in an assert")
        if isinstance(node, ast.Name) and not (
            node.id.startswith(PLACEHOLDER) or node.id in TRUSTED_CALLS or node.id in TRUSTED_MODULES
        ):
            raise Undecomposable(f"the assert reads `{node.id}`, which is no call of the solution")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise Undecomposable(f"the assert reads the attribute `{node.attr}`")
        if isinstance(node, ast.BinOp) and isinstance(node.op, COSTLY_OPS) and _reads_probe(node):
            raise Undecomposable(f"`{ast.unparse(node)[:60]}` scales with the program's output")
        if isinstance(node, ast.Call) and _reads_probe(node):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name in COSTLY_CALLS:
                raise Undecomposable(f"`{ast.unparse(node)[:60]}` scales with the program's output")


def _reads_probe(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id.startswith(PLACEHOLDER) for n in ast.walk(node))


# ---------------------------------------------------------------- the sandbox: evaluating the probes

HARNESS = r"""
import os as _os, sys as _sys
_channel = _os.dup(1)  # the values go here; the solution's own prints go to stderr
_os.dup2(2, 1)
SOLUTION, ENTRY, PROBES, IMPORTS = {spec}
_MAX = {max_depth}
_TAGS = {{type(None): "N", bool: "b", int: "i", float: "f", complex: "c", str: "s", bytes: "y", list: "l",
         tuple: "t", set: "S", frozenset: "F", dict: "d"}}
_MORE = ("Counter", "C"), ("OrderedDict", "O"), ("defaultdict", "D"), ("deque", "q")


def _tag(t):
    tag = _TAGS.get(t)  # the exact type: a subclass of int or str is no int or str here
    col = _sys.modules.get("collections")  # a solution that made a Counter imported collections
    if tag is None and col is not None:
        tag = next((tag for name, tag in _MORE if getattr(col, name, None) is t), None)
    return tag


def _encode(v, depth=0):
    # JSON written by hand, its strings hexadecimal: no escaping, and no `json` to import (15 ms a program)
    tag = _tag(type(v))
    if tag is None or depth > _MAX:
        return '["?","%s"]' % ("".join(c for c in type(v).__name__ if c.isalnum())[:40] if tag is None else "deep")
    if tag == "N":
        return '["N"]'
    if tag == "b":
        return '["b",true]' if v else '["b",false]'
    if tag in "ify":
        return '["%s","%s"]' % (tag, hex(v) if tag == "i" else v.hex())
    if tag == "s":
        return '["s","%s"]' % v.encode("utf-8", "surrogatepass").hex()
    if tag == "c":
        return '["c","%s","%s"]' % (v.real.hex(), v.imag.hex())
    if tag in "dCOD":
        items = ("[%s,%s]" % (_encode(k, depth + 1), _encode(x, depth + 1)) for k, x in v.items())
    else:
        items = (_encode(x, depth + 1) for x in v)
    return '["%s",[%s]]' % (tag, ",".join(items))


def _main():
    ns = {{"__name__": "__main__", "__builtins__": __builtins__}}
    exec(compile(SOLUTION, "solution.py", "exec"), ns)
    bound = {{name: __import__(name) for name in IMPORTS}}
    if ENTRY is not None:
        bound["candidate"] = ns.get(ENTRY)
    out = []
    for probe in PROBES:
        try:
            out.append(_encode(eval(probe, ns, dict(bound))))
        except BaseException as e:  # SystemExit and KeyboardInterrupt too: this probe failed, the next runs
            out.append('["!","%s"]' % "".join(c for c in type(e).__name__ if c.isalnum())[:40])
    data = ('{{"results":[' + ",".join(out) + "]}}\n").encode()
    while data:
        data = data[_os.write(_channel, data):]


_main()
"""


def harness(plan: Plan, solution: str) -> str:
    """The program the sandbox runs: the solution, then the probes, their values written to stdout as JSON."""
    spec = repr((solution, plan.entry_point, list(plan.probes), list(plan.imports)))
    return HARNESS.format(spec=spec, max_depth=MAX_DEPTH)


# ---------------------------------------------------------------- the trusted process: deciding


class BadValue(Exception):
    """A value the program sent that is not plain data (or a malformed message)."""


ARITY = {"N": 0, "b": 1, "s": 1, "i": 1, "f": 1, "y": 1, "c": 2, **dict.fromkeys("ltSFqdCOD", 1)}
# the standard library's containers, rebuilt here as the same types (their == is not dict's or list's:
# an OrderedDict compares in order, a Counter counts a missing key as 0); a defaultdict has no factory here
MAPPINGS = {
    "d": dict,
    "C": lambda pairs: collections.Counter(dict(pairs)),  # from a list of pairs it would count the pairs
    "O": collections.OrderedDict,
    "D": lambda pairs: collections.defaultdict(None, pairs),
}
SEQUENCES = {"l": list, "t": tuple, "S": set, "F": frozenset, "q": collections.deque}


def decode(item: Any, depth: int = 0) -> Any:
    """One type-tagged value back into a built-in value; anything else raises BadValue."""
    if depth > MAX_DEPTH or type(item) is not list or not item or type(item[0]) is not str:
        raise BadValue("a malformed or too deeply nested value")
    tag, args = item[0], item[1:]
    if tag == "!":
        raise BadValue(f"the call raised {args[0] if args else '?'}")
    if tag == "?":
        raise BadValue(f"the call returned {args[0] if args else '?'}, which is no plain value")
    if ARITY.get(tag) != len(args):
        raise BadValue(f"an unknown tag {tag!r} or a wrong number of fields")
    try:
        return _decode_tagged(tag, args, depth)
    except (ValueError, OverflowError, TypeError) as e:  # a bad number, an unhashable key or element
        raise BadValue(f"{type(e).__name__}: {e}") from None


def _decode_tagged(tag: str, args: list, depth: int) -> Any:
    if tag == "N":
        return None
    if tag in MAPPINGS or tag in SEQUENCES:
        items = _typed(args[0], list)
        if tag in SEQUENCES:
            return SEQUENCES[tag](decode(x, depth + 1) for x in items)
        pairs = [_typed(p, list) for p in items]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("a mapping's item is no pair")
        return MAPPINGS[tag]([(decode(k, depth + 1), decode(v, depth + 1)) for k, v in pairs])
    if tag == "b":
        return _typed(args[0], bool)
    text = [_typed(a, str) for a in args]
    if tag == "s":
        return bytes.fromhex(text[0]).decode("utf-8", "surrogatepass")  # sent as the hex of its UTF-8
    if tag == "i":
        return int(text[0], 16)  # base 16: no digit limit, linear time
    if tag == "f":
        return float.fromhex(text[0])
    if tag == "c":
        return complex(float.fromhex(text[0]), float.fromhex(text[1]))
    return bytes.fromhex(text[0])


def _typed(value: Any, kind: type) -> Any:
    if type(value) is not kind:
        raise TypeError(f"{kind.__name__} expected, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Decision:
    passed: bool
    failed: str | None = None  # the first check that failed, and why


def decide(plan: Plan, stdout: str) -> Decision:
    """Whether every check holds on the values the sandbox sent (its whole stdout, one JSON message)."""
    try:
        message = json.loads(stdout)
    except (ValueError, RecursionError):
        return Decision(False, "no readable message from the program")
    results = message.get("results") if isinstance(message, dict) else None
    if not isinstance(results, list) or len(results) != len(plan.probes):
        return Decision(False, "the message does not hold one value per probe")
    for check in plan.checks:
        try:
            values = {f"{PLACEHOLDER}{i}": decode(results[i]) for i in check.probes}
            scope = {**TRUSTED_CALLS, **TRUSTED_MODULES, **values}
            if not eval(check.code, {"__builtins__": {}}, scope):
                return Decision(False, f"{check.source}: false")
        except BadValue as e:
            return Decision(False, f"{check.source}: {e}")
        except Exception as e:  # the assert itself raised on these values (TypeError, RecursionError, ...)
            return Decision(False, f"{check.source}: {type(e).__name__}")
    return Decision(True)
