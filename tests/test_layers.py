"""Imports run one way, along the data flow: no module imports from a stage downstream of it. Read from the
source (every `import`, also inside functions), so a new upward import fails here before it tangles the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nextrl

ROOT = Path(nextrl.__file__).parent

# Lowest first. A module may import from its own layer and the layers before it. Stages follow the data flow:
# corpus -> documents -> base model -> positions -> rollouts -> tasks and rewards -> loss -> update -> eval
# -> report; the engine sits below the environment because environments build sampling plans and score
# rollouts (engine types), while engines know nothing of tasks.
LAYERS = [
    {"errors", "utils"},
    {"config"},
    {"summary"},
    {"accounting"},
    {"plan"},
    {"data"},
    {"model"},
    {"sharing"},
    {"positions"},
    {"engine"},
    {"env"},
    {"algo"},
    {"trainer"},
    {"distributed"},
    {"eval"},
    {"report"},
    {"pipeline", "run_folder", "preflight"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def stage_of(module: str) -> str | None:
    """`nextrl.env.base` -> 'env'; the package root (version, logging setup) has no stage."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "nextrl" else None


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            if node.module == "nextrl":  # `from nextrl import x` imports the stage x
                out += [(node.lineno, f"nextrl.{a.name}") for a in node.names]
    return out


def test_every_stage_has_a_layer():
    stages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    stages |= {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    assert stages <= set(RANK), f"add {sorted(stages - set(RANK))} to LAYERS"


def test_no_module_imports_downstream():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        module = "nextrl." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = stage_of(module.removesuffix(".__init__"))
        if own is None:
            continue
        for line, target in imports(path):
            stage = stage_of(target)
            if stage is not None and stage in RANK and RANK[stage] > RANK[own]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {target} ({stage})")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_the_check_catches_an_upward_import(tmp_path):
    """The rule itself: a model module importing the trainer is reported."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from nextrl.trainer.rl import RLTrainer\n")
    (line, target), *_ = imports(f)
    assert line == 2 and RANK[stage_of(target)] > RANK["model"]


# ---- private names -------------------------------------------------------------------------------------------
# A leading underscore says "this module's own business": another module reaching for it is coupled to it
# behind its interface (engine/tree_sampler.py once imported nine such names from engine/sampler.py, so a
# change to one engine broke two). Dunders (`__version__`) are public. The rule holds for the package, the
# benchmarks and the tests, with these exceptions, each a test that pins a private helper's rule directly:
PRIVATE_ALLOWED = {
    # the verdict's FLOP matching and the selection pool's counts, helpers of `pipeline.run` with no public use
    ("tests/test_hostile.py", "nextrl.pipeline._flop_matched"),
    ("tests/test_report.py", "nextrl.pipeline._pool"),
    # the in-process cache of converted GGUF models, cleared to act as a new process
    ("tests/test_gguf.py", "nextrl.model.gguf._resolved"),
    # the matmul-peak cache's key and the processor name it holds
    ("tests/test_peak.py", "nextrl.accounting.peak._key"),
    ("tests/test_peak.py", "nextrl.accounting.peak._cpu_model"),
}
REPO = ROOT.parents[1]  # src/nextrl -> the checkout


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(dotted: str) -> bool:
    path = ROOT.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_uses(path: Path) -> list[tuple[int, str]]:
    """(line, 'nextrl.module._name') for every private nextrl name the file takes from another module: `from
    nextrl.x import _y`, `import nextrl.x._y`, and `m._y` where `m` is a nextrl module it imported."""
    tree = ast.parse(path.read_text(), str(path))
    out, modules = [], {}  # modules: local name -> the nextrl module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "nextrl":
                    modules[a.asname or a.name] = a.name
                    out += [(node.lineno, a.name) for part in a.name.split(".") if _is_private(part)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "nextrl":
                continue
            for a in node.names:
                target = f"{node.module}.{a.name}"
                if _is_private(a.name) or any(_is_private(part) for part in node.module.split(".")):
                    out.append((node.lineno, target))
                elif _is_module(target):
                    modules[a.asname or a.name] = target
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = ast.unparse(node.value)
            if owner in modules:
                out.append((node.lineno, f"{modules[owner]}.{node.attr}"))
    return out


def test_no_module_uses_another_modules_private_names():
    files = [*ROOT.rglob("*.py"), *Path(__file__).parent.rglob("*.py"), *(REPO / "bench").rglob("*.py")]
    bad = []
    for path in sorted(set(files)):
        shown = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
        for line, name in private_uses(path):
            if (shown, name) not in PRIVATE_ALLOWED:
                bad.append(f"{shown}:{line} uses {name}")
    assert not bad, (
        "private names used outside their module (make them public or add a reason):\n" + "\n".join(bad)
    )


def test_the_check_catches_a_private_import(tmp_path):
    """The rule itself: a from-import, a module attribute and a private module are reported; a dunder and a
    private name of another package are not."""
    f = tmp_path / "x.py"
    f.write_text(
        "from nextrl.engine.sampler import _Seq, TorchSampler\n"
        "from nextrl import __version__\n"
        "from nextrl.model import gguf\n"
        "import nextrl.accounting.peak as peak\n"
        "import torch\n"
        "gguf._resolved.clear(); peak._key(); torch._C\n"
        "import nextrl.engine._hidden\n"
    )
    assert sorted(private_uses(f)) == [
        (1, "nextrl.engine.sampler._Seq"),
        (6, "nextrl.accounting.peak._key"),
        (6, "nextrl.model.gguf._resolved"),
        (7, "nextrl.engine._hidden"),
    ]


# ---- the drawing -------------------------------------------------------------------------------------------
DOC = REPO / "docs" / "architecture.md"


def drawn_floors(text: str) -> dict[int, set[str]]:
    """Floor number -> its packages, read from the drawing's rows `│ F10 │ engine │ ... │`."""
    floors = {}
    for m in re.finditer(r"^│ F(\d+)\s*│ ([a-z_, ]+?)\s*│", text, re.MULTILINE):
        floors[int(m.group(1))] = {name.strip() for name in m.group(2).split(",")}
    return floors


def test_the_drawing_has_the_floors_of_layers():
    """docs/architecture.md draws the house: the same floors, in the same order, as LAYERS; and every file the
    drawing names exists."""
    text = DOC.read_text()
    floors = drawn_floors(text)
    assert sorted(floors) == list(range(1, len(floors) + 1)), f"floor numbers in {DOC.name}: {sorted(floors)}"
    drawn = [floors[i] for i in sorted(floors)]
    assert drawn == LAYERS, (
        f"the drawing in docs/architecture.md (lowest floor first) {drawn} is not tests/test_layers.py's "
        f"LAYERS {LAYERS}: update the drawing"
    )
    drawing = text[text.index("│ F1 ") : text.index("```", text.index("│ F1 "))]
    named = set(re.findall(r"\b([a-z_]+\.py)\b", drawing))
    missing = sorted(f for f in named if not any(ROOT.rglob(f)))
    assert named and not missing, f"the drawing names files that do not exist: {missing}"


# Names a reader meets in several stages on purpose: each stage's interfaces, always imported with their stage.
SHARED_NAMES = {"base"}


def test_no_module_name_is_used_twice():
    """`accounting/` beside `trainer/accounting.py`, or two `sampler.py`, send a reader (and a grep) to the
    wrong file: a module or package name is used once across the stages."""
    where: dict[str, list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        name = rel.parent.name if path.stem == "__init__" else path.stem
        if name and name not in SHARED_NAMES:
            where.setdefault(name, []).append(str(rel))
    twice = {n: paths for n, paths in where.items() if len(paths) > 1}
    assert not twice, f"module names used more than once: {twice}"


# The stages that run RL without knowing what a thought looks like: its tokens belong to the thought format
# (`nextrl.env.formats`), so a new format is one module there and none of these change.
FORMAT_FREE = ("trainer", "distributed", "engine")
THOUGHT_NAMES = {
    "think_open",
    "think_close",
    "THINK_OPEN",
    "THINK_CLOSE",
    "think_ids",
    "ensure_think_tokens",
    "has_think_tokens",
}
THOUGHT_TEXT = ("<think>", "</think>")


def thought_tokens_named(path: Path, root: Path = ROOT) -> list[str]:
    """Identifiers and string literals (docstrings and comments are prose, and free) that name a thought
    token."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        name = (
            node.id
            if isinstance(node, ast.Name)
            else node.attr
            if isinstance(node, ast.Attribute)
            else node.name
            if isinstance(node, (ast.FunctionDef, ast.alias))
            else node.arg
            if isinstance(node, ast.arg)
            else None
        )
        if name in THOUGHT_NAMES:
            found.append(f"{path.relative_to(root)}:{node.lineno} names {name}")
        literal = (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        )
        if literal and any(t in node.value for t in THOUGHT_TEXT):
            found.append(f"{path.relative_to(root)}:{node.lineno} spells a thought token")
    return found


def test_trainer_learner_and_engines_name_no_thought_token():
    bad = [
        hit
        for stage in FORMAT_FREE
        for path in sorted((ROOT / stage).rglob("*.py"))
        for hit in thought_tokens_named(path)
    ]
    assert not bad, "thought tokens belong to nextrl.env.formats:\n" + "\n".join(bad)


def test_the_thought_check_catches_a_token(tmp_path):
    """The rule itself: a docstring may mention `</think>`; a name or a string literal may not."""
    f = tmp_path / "x.py"
    f.write_text('"""Closes with </think>."""\nclose = env.think_close\nstop = "</think>"\n')
    hits = [h.split(" ", 1)[1] for h in thought_tokens_named(f, tmp_path)]
    assert sorted(hits) == ["names think_close", "spells a thought token"]
