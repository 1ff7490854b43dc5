"""Wrong solutions that try to make the tests report success: each must score 0.

Each test is one *class* of attack; its variants are generated (the means × where it runs × the problem), so
that what is tested is the class, not a list of programs. Every batch also holds the honest solution, which
must pass: a zero is the verdict's, not a broken harness's. Where the old way (solution and tests in one
program, a sentinel printed after them) is fooled by the class, the test shows that too, so the suite keeps
testing something real. The verdict's threat model is in `nextrl.env.verdict`."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

from nextrl.env.code import run_tests
from nextrl.env.sandbox import Limits, unavailable
from nextrl.env.verdict import PLACEHOLDER, Plan, decide, harness, plan_tests

LIMITS = Limits(cpu_seconds=3, wall_seconds=6.0, memory_mb=256)
WORKERS = 2

PROBLEMS = {
    "add": {  # HumanEval's shape: check(candidate), exact values
        "task_id": "add",
        "prompt": 'def add(a, b):\n    """Return a + b."""\n',
        "test": (
            "\n\nMETADATA = {}\n\n\ndef check(candidate):\n"
            "    assert candidate(2, 3) == 5\n"
            "    assert candidate(-7, 4) == -3\n"
            "    assert candidate(100, 23) == 123\n"
        ),
        "entry_point": "add",
        "honest": "    return a + b\n",
    },
    "flags": {  # HumanEval/0's shape: booleans (True == 1, so a bool answer must be the right bool)
        "task_id": "flags",
        "prompt": 'def has_even(xs):\n    """Whether xs holds an even number."""\n',
        "test": (
            "def check(candidate):\n"
            "    assert candidate([1, 2, 3]) == True\n"
            "    assert candidate([1, 3]) == False\n"
            "    assert candidate([]) == False\n"
        ),
        "entry_point": "has_even",
        "honest": "    return any(x % 2 == 0 for x in xs)\n",
    },
    "half": {  # tolerances: abs(...) < tol and math.isclose
        "task_id": "half",
        "prompt": 'def half(x):\n    """Half of x."""\n',
        "test": (
            "def check(candidate):\n"
            "    import math\n"
            "    assert abs(candidate(3.0) - 1.5) < 1e-6\n"
            "    assert math.isclose(candidate(5), 2.5)\n"
            "    assert abs(candidate(-1) + 0.5) <= 1e-9\n"
        ),
        "entry_point": "half",
        "honest": "    return x / 2\n",
    },
    "rev": {  # MBPP's shape: top-level asserts, a converter around the call
        "task_id": 1,
        "text": "Write a function to reverse a string.",
        "test_list": [
            "assert rev('abc') == 'cba'",
            "assert rev('') == ''",
            "assert list(rev('xy')) == ['y', 'x']",
        ],
        "code": "def rev(s):\n    return s[::-1]\n",
        "honest": "def rev(s):\n    return s[::-1]\n",
    },
}
HUMANEVAL_AND_MBPP = ("add", "rev")


def completion(name: str, body: str, module: str = "") -> str:
    """A completion whose function runs `body` and whose module then runs `module` (after the function, at
    import time, as a policy's completion can)."""
    body, module = textwrap.dedent(body).strip("\n"), textwrap.dedent(module).strip("\n")
    problem = PROBLEMS[name]
    if "prompt" in problem:
        return textwrap.indent(body, "    ") + "\n\n\n" + module + "\n"
    return f"def rev(*args, **kwargs):\n{textwrap.indent(body, '    ')}\n\n\n{module}\n"


def scores(attacks: list[tuple[str, str]], split: bool = True) -> list[bool]:
    """Whether each (problem, completion) passes; the honest solution of every problem runs in the same batch
    and must pass."""
    names = sorted({name for name, _ in attacks})
    batch = [(n, PROBLEMS[n]["honest"]) for n in names] + attacks
    verdicts = run_tests([PROBLEMS[n] for n, _ in batch], [c for _, c in batch], LIMITS, WORKERS, split)
    honest, attacked = verdicts[: len(names)], verdicts[len(names) :]
    assert all(v.passed for v in honest), [v for v in honest if not v.passed]
    return [v.passed for v in attacked]


def passing(attacks: list[tuple[str, str]], split: bool = True) -> list[str]:
    return [f"{n}:\n{c}" for (n, c), ok in zip(attacks, scores(attacks, split), strict=True) if ok]


pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


def test_the_problems_are_decided_in_the_trusted_process():
    for name, problem in PROBLEMS.items():
        assert plan_tests(problem) is not None, name


# ---------------------------------------------------------------- permissive equality


def permissive_classes() -> list[tuple[str, str]]:
    """A class whose comparisons answer whatever a test wants, on every base a value can have; with only
    `__eq__`, or with every comparison, `abs`, subtraction and a hash."""
    bases = {"object": "", "int": "0", "float": "0.0", "str": "''", "list": "[]", "tuple": "()", "dict": "{}"}
    eq_only = "__eq__ = lambda self, other: True\n__ne__ = lambda self, other: False\n"
    everything = eq_only + textwrap.dedent("""
        __lt__ = __le__ = __gt__ = __ge__ = lambda self, other: True
        __abs__ = lambda self: 0.0
        __sub__ = __rsub__ = __add__ = __radd__ = lambda self, other: self
        __hash__ = lambda self: 0
        __bool__ = lambda self: True
        __float__ = lambda self: 2.5
    """)
    out = []
    for (base, arg), methods in itertools.product(bases.items(), (eq_only, everything)):
        module = f"class Anything({base}):\n" + textwrap.indent(methods, "    ")
        out.append((f"return Anything({arg})", module))
    return out


def test_objects_that_equal_anything_score_zero():
    attacks = [(n, completion(n, body, module)) for n in PROBLEMS for body, module in permissive_classes()]
    assert passing(attacks) == []
    # the class is real: where the tests compare inside the program (the old way), it passes as soon as the
    # old way's rebuilding of results is undone, which a program in that process can always do
    undo = "\nimport builtins\nbuiltins.any = lambda items: True"
    contrast = [(n, c + undo) for n, c in attacks if n == "add" and "(object)" in c]
    assert passing(contrast, split=False) and not passing(contrast)


def test_values_that_are_not_plain_data_score_zero():
    """Generators, iterators, functions, instances, exceptions, a subclass of a standard container: the
    original tests would have compared them with their own `__eq__`; here they are no answer."""
    made = [
        ("return (x for x in [5])", ""),
        ("return iter([5])", ""),
        ("return lambda *a: 5", ""),
        ("return NotImplemented", ""),
        ("return Ellipsis", ""),
        ("return AssertionError()", ""),
        ("return types.SimpleNamespace()", "import types"),
        (
            "return Box(5)",
            "import collections\nclass Box(collections.Counter):\n    __eq__ = lambda s, o: True",
        ),
        ("return Pair(5, 5)", "import collections\nPair = collections.namedtuple('Pair', 'a b')"),
    ]
    attacks = [(n, completion(n, body, module)) for n in HUMANEVAL_AND_MBPP for body, module in made]
    assert passing(attacks) == []


# ---------------------------------------------------------------- ending the program


EXITS = [
    "exit(0)",
    "quit()",
    "sys.exit(0)",
    "sys.exit()",
    "raise SystemExit(0)",
    "os._exit(0)",
    "os.kill(os.getpid(), signal.SIGKILL)",
    "os.kill(1, signal.SIGKILL)",  # its namespace's init
]


def test_exiting_early_scores_zero():
    """Leave before the tests run or while they run (`sys.exit` inside the tested function), or when the
    program ends (an atexit handler that turns a failure into exit status 0)."""
    imports = "import os, signal, sys, atexit"
    attacks = []
    for name, how in itertools.product(HUMANEVAL_AND_MBPP, EXITS):
        attacks.append((name, completion(name, "return None", f"{imports}\n{how}")))  # at import
        attacks.append((name, completion(name, f"{imports}\n{how}")))  # inside the tests
        handler = f"def leave():\n    {how}\natexit.register(leave)"
        attacks.append((name, completion(name, "return None", f"{imports}\n{handler}")))  # at the end
    assert passing(attacks) == []


# ---------------------------------------------------------------- forging the report


def forgeries() -> list[str]:
    """Module code that prints what a pass might look like, or writes a results message, on every open
    descriptor, then leaves with status 0."""
    read_sentinels = textwrap.dedent("""
        import os, re, sys
        texts = []
        for path in [__file__ if "__file__" in globals() else "", sys.argv[0], "/proc/self/cmdline"]:
            try:
                texts.append(open(path, errors="replace").read())
            except OSError:
                pass
        for t in texts:
            for token in re.findall(r"nextrl-passed-[0-9a-f]+", t):
                print(token, flush=True)
    """)
    message = textwrap.dedent("""
        import json, os, sys
        probes = getattr(sys.modules["__main__"], "PROBES", None) or [0] * 8
        for forged in ({forged}):
            data = json.dumps({{"results": [forged] * len(probes)}}) + "\\n"
            for fd in range(1, 64):
                try:
                    os.write(fd, data.encode())
                except OSError:
                    pass
    """)
    tagged = [
        '["b", True]',
        '["i", "0x5"]',
        '["s", "636261"]',  # 'cba', as the hex of its UTF-8
        '["f", (2.5).hex()]',
        '["N"]',
        '["?", "int"]',
    ]
    out = [read_sentinels + "\nos._exit(0)"]
    out += ["print('nextrl-passed-' + '0' * 16)\nimport os\nos._exit(0)", "print('PASSED')\nprint('ok')"]
    out += [message.format(forged=f"{t},") + "\nos._exit(0)" for t in tagged]
    out += [message.format(forged=", ".join(tagged))]  # and carry on: the harness writes its own afterwards
    return out


def test_forged_reports_score_zero():
    attacks = [(n, completion(n, "return None", f)) for n in HUMANEVAL_AND_MBPP for f in forgeries()]
    attacks += [(n, completion(n, f + "\nreturn None")) for n in ("flags",) for f in forgeries()[:4]]
    assert passing(attacks) == []


# ---------------------------------------------------------------- changing the rules


PATCHES = [
    "import builtins\nbuiltins.print = lambda *a, **k: None",
    "import builtins\nbuiltins.abs = lambda x: 0",
    "import math\nmath.isclose = lambda *a, **k: True",
    "import builtins\nbuiltins.AssertionError = type('Never', (Exception,), {})",
    "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: int",
    "import builtins\nbuiltins.eval = lambda *a, **k: True",
    "import builtins\n_l = builtins.list\nbuiltins.list = lambda *a: ['y', 'x']",
    "import __main__\n__main__._encode = lambda v, depth=0: ['b', True]",
    "import __main__\n__main__._TAGS[type(None)] = 'b'",
    "import __main__\n__main__.PROBES[:] = []",
    'import json\njson.dumps = lambda *a, **k: \'{"results": [["b", true]]}\'',
    "import os\n_w = os.write\nos.write = lambda fd, data: _w(fd, b'{\"results\": []}')",
    "import sys\nsys.settrace(lambda *a: None)\nsys.setprofile(lambda *a: None)",
    "import sys\nsys.excepthook = lambda *a: print('nextrl-passed')",
]


def test_patching_builtins_or_the_harness_scores_zero():
    """Rebind what the tests or the harness call (print, abs, math.isclose, AssertionError, isinstance, eval,
    list, the encoder, the probes, the JSON writer, the write itself, the excepthook) before the tests run."""
    attacks = [(n, completion(n, "return None", p)) for n in PROBLEMS for p in PATCHES]
    attacks += [("add", completion("add", p + "\nreturn None")) for p in PATCHES]  # and while they run
    assert passing(attacks) == []
    # patching the comparison fools the old way (the tests compare inside the program)
    assert passing([("half", completion("half", "return 0", PATCHES[1] + "\n" + PATCHES[2]))], split=False)


def test_swallowing_failures_scores_zero():
    """Turn the failed assert into a success: catch it on the way out (excepthook, atexit, a thread's hook,
    `__del__`), silence stderr, or print what a pass prints."""
    ways = [
        "import os, sys\nsys.excepthook = lambda *a: os._exit(0)",
        "import atexit, os\natexit.register(os._exit, 0)",
        "import os, threading\nthreading.excepthook = lambda *a: os._exit(0)",
        "import os\nclass Late:\n    def __del__(self):\n        os._exit(0)\nkeep = Late()",
        "import os, sys\nsys.stderr = open(os.devnull, 'w')",
        "import builtins, sys\nbuiltins.AssertionError = SystemExit",
    ]
    attacks = [(n, completion(n, "return None", w)) for n in HUMANEVAL_AND_MBPP for w in ways]
    assert passing(attacks) == []


# ---------------------------------------------------------------- finding the answers


LOOKUP = """
import ast, gc, re, sys
found = {{}}
def texts():
    for path in [__file__ if "__file__" in globals() else "", sys.argv[0], "/proc/self/cmdline",
                 "/proc/1/cmdline", "/dev/stdin"]:
        try:
            yield open(path, errors="replace").read()
        except OSError:
            pass
    for obj in gc.get_objects():  # every string the process holds: its harness's, its probes
        items = obj.items() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
        for item in items:
            yield from (x for x in (item if isinstance(item, tuple) else (item,)) if isinstance(x, str))
    frame = sys._getframe()
    while frame is not None:
        yield repr(frame.f_locals)
        frame = frame.f_back
def lookup(args):
    call = re.escape("{name}(" + ", ".join(map(repr, args)) + ")") + r"\\s*==\\s*([^\\n,]+)"
    for text in texts():
        for hit in re.findall(call, text):
            try:
                return ast.literal_eval(hit.strip())
            except Exception:
                pass
    return None
"""


def test_reading_the_expected_values_scores_zero():
    """Search everything the program can read (its own files, argv, stdin, every string in its memory, the
    callers' frames) for `f(args) == expected` and answer with it."""
    attacks = [
        ("add", completion("add", "return lookup((a, b))", LOOKUP.format(name="candidate"))),
        ("rev", completion("rev", "return lookup(args)", LOOKUP.format(name="rev"))),
    ]
    assert passing(attacks) == []
    assert passing(attacks, split=False)  # the old way hands it the tests: it finds them


READ_DATA = """
import ast, gzip, json, os, re
def records():
    for root in {roots!r}:
        for folder, _, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    opener = gzip.open if path.endswith(".gz") else open
                    with opener(path, "rt") as f:
                        for line in f:
                            yield json.loads(line)
                except Exception:
                    pass
def lookup(args):
    call = re.escape("candidate(" + ", ".join(map(repr, args)) + ")") + r"\\s*==\\s*([^\\n,]+)"
    for record in records():
        for hit in re.findall(call, str(record.get("test", ""))):
            return ast.literal_eval(hit.strip())
"""


def test_reading_the_data_set_scores_zero(monkeypatch):
    """Open the problems file (its path is stable across a run) and look the answer up in its tests: the
    code environment hides the file's folder from the programs."""
    folders = [Path(tempfile.mkdtemp(prefix=f"nextrl-{what}-")) for what in ("data", "sandbox")]
    try:
        for folder in folders:
            os.chmod(folder, 0o755)
        data = folders[0] / "problems.jsonl"
        data.write_text(json.dumps({k: v for k, v in PROBLEMS["add"].items() if k != "honest"}) + "\n")
        data.chmod(0o644)
        monkeypatch.setattr(tempfile, "tempdir", str(folders[1]))  # the data is outside the sandbox's tmpfs
        attack = completion("add", "return lookup((a, b))", READ_DATA.format(roots=[str(folders[0])]))
        problem, honest = PROBLEMS["add"], PROBLEMS["add"]["honest"]
        hidden = run_tests([problem] * 2, [honest, attack], LIMITS, WORKERS, hidden=[str(data)])
        assert [v.passed for v in hidden] == [True, False]
        shown = run_tests([problem], [attack], LIMITS, 1)
        assert shown[0].passed  # the hole it closes: unhidden, the data set gives the answers away
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def test_the_sandbox_never_receives_an_expected_value():
    problem = {
        "prompt": 'def f(x):\n    """"""\n',
        "test": "def check(candidate):\n    assert candidate(1) == 918273645\n    assert candidate(2) != 'zq9'",
        "entry_point": "f",
    }
    plan = plan_tests(problem)
    program = harness(plan, problem["prompt"] + "    return x\n")
    assert "918273645" not in program and "zq9" not in program and "candidate(1)" in program


# ---------------------------------------------------------------- breaking the trusted side


def test_values_built_to_break_the_trusted_side_score_zero():
    """Huge numbers, deep nesting, NaN, huge strings, unhashable set members: the trusted process decodes
    and compares them without raising, and they do not pass."""
    made = [
        "return 10 ** 200_000",
        "return float('nan')",
        "x = []\nfor _ in range(100_000):\n    x = [x]\nreturn x",
        "return 'z' * 900_000",
        "return [[1]] * 100_000",
    ]
    deep = "import os\nos.write(1, b'[' * 900_000)\nos._exit(0)"
    attacks = [(n, completion(n, body)) for n in ("add", "half") for body in made]
    attacks += [(n, completion(n, "return None", deep)) for n in ("add", "half")]
    assert passing(attacks) == []


def random_message(rng: random.Random, probes: int):
    """A message of the right shape or not, its values valid, malformed or of a wrong type."""
    atoms = [
        ["b", True], ["b", 1], ["i", "0x5"], ["i", 5], ["i", "zz"], ["i", "0x" + "f" * 5000], ["f", "nan"],
        ["f", "0x1.4p+2"], ["f", 5.0], ["s", "cba"], ["s", "636261"], ["s", "ff"], ["s", 5], ["N"], ["N", 1], ["c", "0x1p0"], ["y", "zz"],
        ["?", "X"], ["!", "ValueError"], ["q"], [], "5", 5, None, {"x": 1}, ["S", [["l", []]]],
        ["d", [[["l", []], ["N"]]]], ["d", [[["i", "0x1"]]]], ["C", [[["s", "a"], ["i", "0x1"]]]],
    ]  # fmt: skip

    def value(depth=0):
        if depth < 3 and rng.random() < 0.3:
            return [rng.choice("ltSFqd"), [value(depth + 1) for _ in range(rng.randint(0, 3))]]
        return rng.choice(atoms)

    shape = rng.random()
    if shape < 0.1:
        return rng.choice(["", "{", "[]", "null", '{"results": 5}', "[" * 50_000, "\x00\xff"])
    n = probes if shape < 0.8 else rng.randint(0, 2 * probes + 1)
    text = json.dumps({"results": [value() for _ in range(n)]})
    return text if shape < 0.9 else text + "\n" + text


def test_malformed_messages_score_zero_and_never_raise():
    """The trusted side reads whatever the program sends: garbage, the wrong number of values, unknown tags,
    wrong types under a tag, numbers too long, unhashable keys, nesting too deep. None passes a test that
    wants values no message here holds, and none raises."""
    plan = plan_tests(
        {
            "text": "",
            "test_list": ["assert f(1) == 7", "assert f(2) == ('a', 7)", "assert abs(f(3) - 2.0) < 1e-3"],
        }
    )
    rng = random.Random(0)
    for _ in range(3000):
        assert not decide(plan, random_message(rng, len(plan.probes))).passed
    good = json.dumps(
        {"results": [["i", "0x7"], ["t", [["s", b"a".hex()], ["i", "0x7"]]], ["f", (2.0).hex()]]}
    )
    assert decide(plan, good).passed  # the right values, plainly sent, do pass
    assert not decide(plan, good.replace('"t"', '"l"')).passed  # a list is no tuple


def test_a_check_reads_only_its_placeholders_and_whitelisted_names():
    """What runs in the trusted process is the test's own expression over plain values, nothing it names
    beyond the whitelist: a test that needs more runs the old way (and is counted)."""
    for test in [
        "assert f(1) == sys.getsizeof(1)",  # a module the whitelist lacks
        "assert f(1) * f(2) == 4",  # a product whose size the program sets
        "assert len(range(f(1))) == 3",
        "assert f(1).__class__ == int",
        "assert all(f(x) for x in [1, 2])",
    ]:
        record = {"text": "", "test_list": [test], "code": "def f(x):\n    return x\n"}
        assert plan_tests(record) is None, test
    helper = "def helper(x):\n    return x\n\ndef check(candidate):\n    assert candidate(1) == helper(1)\n"
    assert plan_tests({"prompt": "", "test": helper, "entry_point": "f"}) is None  # a function of the tests
    assert isinstance(plan_tests({"text": "", "test_list": ["assert round(f(1), 2) == 1.0"]}), Plan)
    assert PLACEHOLDER not in "".join(plan_tests({"text": "", "test_list": ["assert f(1) == 1"]}).probes)


def test_plain_values_cross_the_channel_type_exact():
    """What the sandbox sends back is rebuilt here as the same value of the same type: bool is no int, a
    tuple no list, an OrderedDict no dict; -0.0, inf, nan, huge ints, lone surrogates and bytes survive (a
    defaultdict comes back without its factory)."""
    import collections
    import math

    from nextrl.env.sandbox import run_python
    from nextrl.env.verdict import decode

    values = [
        "None", "True", "False", "0", "-5", "10 ** 40", "-(2 ** 70)", "1.5", "-0.0", "float('inf')",
        "float('nan')", "1 + 2j", "'héllo \\ud800 ✓'", "b'\\x00\\xff'", "[1, (2, [3.0])]", "(1,)", "{1: 'a', (2,): [None]}",
        "{1, 2}", "frozenset({3})", "collections.Counter('aab')", "collections.OrderedDict([(2, 1), (1, 2)])",
        "collections.defaultdict(list, {1: [2]})", "collections.deque([1, 2])",
    ]  # fmt: skip
    plan = plan_tests({"text": "", "test_list": [f"assert f({i}) == 0" for i in range(len(values))]})
    solution = "import collections\nVALUES = [" + ", ".join(values) + "]\ndef f(i):\n    return VALUES[i]\n"
    result = run_python(harness(plan, solution), LIMITS)
    got = [decode(item) for item in json.loads(result.stdout)["results"]]
    expected = [eval(v, {"collections": collections}) for v in values]
    for want, have, text in zip(expected, got, values, strict=True):
        assert type(have) is type(want), text
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(have)
        else:
            same_repr = isinstance(want, collections.defaultdict) or repr(have) == repr(
                want
            )  # no factory sent
            assert have == want and same_repr, text
