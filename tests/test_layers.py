"""Imports run one way, along the data flow: no module imports from a stage downstream of it. Read from the
source (every `import`, also inside functions), so a new upward import fails here before it tangles the code."""

from __future__ import annotations

import ast
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
    {"selection"},
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


# The stages that run RL without knowing what a thought looks like: its tokens belong to the thought format
# (`nextrl.env.formats`), so a new format is one module there and none of these change.
FORMAT_FREE = ("trainer", "distributed", "engine")
THOUGHT_NAMES = {"think_open", "think_close", "THINK_OPEN", "THINK_CLOSE", "think_ids", "ensure_think_tokens"}
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
