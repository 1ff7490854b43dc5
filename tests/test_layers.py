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
