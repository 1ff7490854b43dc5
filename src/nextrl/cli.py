"""The `nextrl` command: a thin layer over `nextrl.pipeline` and the stage functions."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from nextrl.config import ConfigError, available_presets, dump_config, load_config
from nextrl.errors import NextRLError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="nextrl: reinforcement learning on next-token prediction. Start with `nextrl run`.",
)

PresetOpt = Annotated[
    str, typer.Option("--preset", "-p", help="shipped preset name (see `nextrl presets`) or a YAML file")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a config key, e.g. --set rl.lr=1e-5 (repeatable)"),
]


def _config(preset: str, overrides: list[str] | None):
    try:
        return load_config(preset, overrides or [])
    except ConfigError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    preset: PresetOpt = "tiny",
    overrides: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="run folder (default runs/<timestamp>)")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the run in --out where it stopped")
    ] = False,
) -> None:
    """Run the main job: pretrain a base model (cached), select positions, RL-train, train a FLOP-matched
    baseline, evaluate all three, and write summary.json, metrics.jsonl, TensorBoard events and report.html."""
    from nextrl.pipeline import run as run_pipeline
    from nextrl.report import summary_table

    cfg = _config(preset, overrides)
    if out is None:
        if resume:
            typer.secho("error: --resume needs --out naming the run folder", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        out = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    try:
        summary = run_pipeline(cfg, out, resume=resume)
    except NextRLError as e:  # expected failures: one message; anything else is a bug and keeps its traceback
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(e.exit_code) from None
    typer.echo(summary_table(summary))
    typer.echo(f"\nreport: {out / 'report.html'}")


@app.command()
def pretrain(preset: PresetOpt = "tiny", overrides: SetOpt = None) -> None:
    """Build (or find in the cache) the base tokenizer and model for a config, and print where it is."""
    from nextrl.model.pretrain import prepare_base

    base = prepare_base(_config(preset, overrides))
    typer.echo(f"base model: {base.path}")


@app.command()
def config(preset: PresetOpt = "tiny", overrides: SetOpt = None) -> None:
    """Print the fully resolved config (what a run would save as config.yaml)."""
    typer.echo(dump_config(_config(preset, overrides)), nl=False)


@app.command()
def presets() -> None:
    """List the shipped presets."""
    for name in available_presets():
        typer.echo(name)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder holding summary.json")]) -> None:
    """Re-render report.html of a run folder and print its summary table."""
    from nextrl.report import summary_table, write_report
    from nextrl.summary import RunSummary, SummaryError

    source = run_dir / "summary.json"
    if not source.is_file():
        typer.secho(f"error: {source} not found", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    path = write_report(run_dir)  # renders (with a warning) even when the summary does not validate
    try:
        summary = RunSummary.load(source)
    except SummaryError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        typer.echo(f"\nreport (metrics only): {path}")
        raise typer.Exit(1) from None
    typer.echo(summary_table(summary))
    typer.echo(f"\nreport: {path}")


RunOpt = Annotated[
    Path | None,
    typer.Option(
        "--run",
        help="a run folder: its config.yaml is the config (unless --preset is given) and its index's held-out "
        "positions are the next-token problems",
    ),
]
SamplesOpt = Annotated[int, typer.Option("--samples", "-n", help="samples per problem")]
KOpt = Annotated[list[int] | None, typer.Option("--k", help="k of pass@k (repeatable; default 1)")]
ProblemsOpt = Annotated[int, typer.Option(help="problems evaluated per domain")]
TemperatureOpt = Annotated[float, typer.Option(help="sampling temperature")]


def _eval_config(run_dir: Path | None, preset: str | None, overrides: list[str] | None):
    """The config an evaluation reads its domains from, and the run's index when a run folder is given."""
    from nextrl.positions.index import PositionIndex

    if run_dir is not None and not (run_dir / "config.yaml").is_file():
        raise UsageError(f"--run {run_dir}: not a run folder (no config.yaml)")
    cfg = _config(preset or (str(run_dir / "config.yaml") if run_dir else "micro"), overrides)
    index = None
    if run_dir is not None:
        if not (run_dir / "index" / "positions.parquet").is_file():
            raise UsageError(f"--run {run_dir}: the run has no position index yet (index/positions.parquet)")
        index = PositionIndex.load(run_dir / "index")
    return cfg, index


def _domain_table(paths, run_dir, preset, overrides, samples, ks, problems, temperature):
    from nextrl.eval.domains import check_ks, evaluate_domains, load_checkpoints

    check_ks(ks or [1], samples)
    cfg, index = _eval_config(run_dir, preset, overrides)
    tok, models = load_checkpoints(paths)
    return evaluate_domains(cfg, models, tok, index, samples, ks or [1], problems, temperature)


@app.command()
def merge(
    models: Annotated[list[Path], typer.Argument(help="Hugging Face model folders of one architecture")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder of the merged checkpoint")],
    method: Annotated[
        str, typer.Option(help="linear, task_arithmetic, ties, dare_linear or dare_ties")
    ] = "linear",
    base: Annotated[
        Path | None, typer.Option(help="the model the task vectors start from (all methods but linear)")
    ] = None,
    weight: Annotated[list[float] | None, typer.Option(help="one weight per model (repeatable)")] = None,
    density: Annotated[float, typer.Option(help="share of each task vector kept (ties, dare_*)")] = 0.5,
    seed: Annotated[int, typer.Option(help="seed of DARE's random drops")] = 0,
    evaluate: Annotated[
        bool, typer.Option("--eval/--no-eval", help="end with each input and the merge on each domain")
    ] = True,
    run_dir: RunOpt = None,
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="config of the domains")] = None,
    overrides: SetOpt = None,
    samples: SamplesOpt = 4,
    k: KOpt = None,
    problems: ProblemsOpt = 32,
    temperature: TemperatureOpt = 0.8,
) -> None:
    """Merge checkpoints into one Hugging Face checkpoint (mergekit; see nextrl.model.merge for the methods),
    then evaluate every input and the merged model on each configured domain (written to OUT/eval.json):
    nextrl merge a b --out ab --run runs/main --set 'env.mixture={next_token: 1, math: 1}' ..."""
    import json

    from nextrl.model.merge import merge_models
    from nextrl.utils.io import atomic_write_text

    try:
        path = merge_models(models, out, method, base, weight, density, seed)
        typer.echo(f"merged {len(models)} model(s) with {method} into {path}")
        if not evaluate:
            return
        from nextrl.eval.domains import NothingToEvaluate

        try:
            table = _domain_table(
                [*models, path], run_dir, preset, overrides, samples, k, problems, temperature
            )
        except NothingToEvaluate as e:  # the merge stands; only the table is missing
            typer.echo(f"not evaluated: {e}")
            return
        typer.echo(table.render())
        atomic_write_text(Path(path) / "eval.json", json.dumps(table.as_dict(), indent=2))
    except NextRLError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(e.exit_code) from None


@app.command(name="eval")
def eval_models(
    models: Annotated[
        list[Path], typer.Argument(help="Hugging Face model folders (the run's tokenizer inside)")
    ],
    run_dir: RunOpt = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", "-p", help="config of the domains (default: the run's, or micro)"),
    ] = None,
    overrides: SetOpt = None,
    samples: SamplesOpt = 4,
    k: KOpt = None,
    problems: ProblemsOpt = 64,
    temperature: TemperatureOpt = 0.8,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the table here as JSON")] = None,
) -> None:
    """pass@k of models on every configured domain (math, code: their problem files; next-token: the held-out
    positions of --run): e.g. nextrl eval merged --set env.name=math --set 'env.options={path: gsm8k.jsonl}'"""
    import json

    from nextrl.utils.io import atomic_write_text

    try:
        table = _domain_table(models, run_dir, preset, overrides, samples, k, problems, temperature)
    except NextRLError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(e.exit_code) from None
    typer.echo(table.render())
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(table.as_dict(), indent=2))


@app.command()
def plan(
    flops: Annotated[float, typer.Option(help="the RL run's FLOP budget, e.g. 1e26")] = 1e26,
    model: Annotated[
        str, typer.Option(help="model shape: qwen3-0.6b … qwen3-32b, llama3-8b, llama3-70b")
    ] = "qwen3-8b",
    hardware: Annotated[
        str, typer.Option(help="h100, h200, b200, dgx-b200, or this-machine (measured now)")
    ] = "dgx-b200",
    nodes: Annotated[int, typer.Option(help="nodes (of hardware's GPUs per node)")] = 64,
    deadline_days: Annotated[
        float | None, typer.Option(help="also: the fewest nodes that finish in time")
    ] = None,
    positions: Annotated[int, typer.Option(help="positions per step")] = 512,
    group_size: Annotated[int, typer.Option(help="samples per position")] = 8,
    context: Annotated[int, typer.Option(help="prompt tokens")] = 1024,
    thought: Annotated[int, typer.Option(help="thought tokens")] = 256,
    per_prefix: Annotated[int, typer.Option(help="positions sharing one document prefix")] = 4,
    no_share: Annotated[bool, typer.Option("--no-share", help="plan without prefix sharing")] = False,
    staleness: Annotated[int, typer.Option(help="async: steps generation may run ahead")] = 1,
    profiles: Annotated[Path | None, typer.Option(help="YAML overriding hardware/models figures")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the plan as JSON here")] = None,
    calibrate: Annotated[
        bool,
        typer.Option("--calibrate", help="predict the measured RUNS on this machine instead of planning"),
    ] = False,
    runs: Annotated[list[Path] | None, typer.Argument(help="run folders (with --calibrate)")] = None,
) -> None:
    """Plan an RL run: steps, wall-clock, GPU-hours, where the time goes, sync vs async, the bottleneck and the
    change that helps most (see docs/planning.md). With --calibrate RUN_DIR...: how well the same model
    predicts runs measured on this machine."""
    import json

    from nextrl.plan.cost import Workload
    from nextrl.plan.planner import make_plan, nodes_for_deadline, render_plan
    from nextrl.plan.profiles import model as model_profile
    from nextrl.utils.io import atomic_write_text

    if calibrate or runs:
        _plan_calibration(calibrate, runs, json_out)
        return
    try:
        m = model_profile(model, profiles)
        hw = _hardware(hardware, profiles)
        w = Workload(
            positions, group_size, context, thought, per_prefix=per_prefix, share_prefix=not no_share
        )
        p = make_plan(flops, m, hw, nodes, w, staleness)
        if deadline_days is not None:
            p["nodes_for_deadline"] = nodes_for_deadline(flops, m, hw, deadline_days * 86400, w, staleness)
    except NextRLError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(e.exit_code) from None
    typer.echo(render_plan(p, flops, m, hw, nodes, w, deadline_days))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(p, indent=2) + "\n")


def _hardware(hardware: str, profiles: Path | None):
    """A named hardware profile, or this machine measured now (`this-machine`)."""
    from nextrl.plan.profiles import hardware as hw_profile

    if hardware != "this-machine":
        return hw_profile(hardware, profiles)
    import torch

    from nextrl.accounting.peak import cpu_prefers_bf16
    from nextrl.plan.machine import this_machine

    # the dtype a run here would use: bf16 only where it is faster than fp32 (not where it is emulated)
    return this_machine(torch.bfloat16 if cpu_prefers_bf16(torch.device("cpu")) else torch.float32)


def _plan_calibration(calibrate: bool, runs: list[Path] | None, json_out: Path | None) -> None:
    """`nextrl plan --calibrate RUN...`: print (and write) how well the cost model predicts the runs."""
    import json

    from nextrl.plan.calibrate import render
    from nextrl.utils.io import atomic_write_text

    try:
        if not calibrate:
            raise UsageError("run folders are read only with --calibrate")
        result = _calibrate(runs or [])
    except NextRLError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(e.exit_code) from None
    typer.echo(render(result))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")


def _geometry(run: Path) -> dict | None:
    """How a run's prompts share prefixes, from its position index (None when it has none)."""
    from nextrl.positions.index import PositionIndex

    if not (run / "index" / "positions.parquet").is_file():
        return None
    cfg = load_config(str(run / "config.yaml"))
    index = PositionIndex.load(run / "index")
    return index.prompt_geometry("train", cfg.selection.context, cfg.positions.per_prefix)


def _calibrate(runs: list[Path]) -> dict:
    """Each run predicted from the others on this machine's measured profile (`nextrl.plan.calibrate`)."""
    import torch

    from nextrl.accounting.peak import cpu_prefers_bf16
    from nextrl.plan.calibrate import calibrate, check_count, read_run
    from nextrl.plan.machine import this_machine

    measured = [read_run(r, geometry=_geometry(r)) for r in runs]
    check_count(len(measured))  # before measuring the machine
    auto = "bfloat16" if cpu_prefers_bf16(torch.device("cpu")) else "float32"
    dtypes = {auto if r.dtype == "auto" else r.dtype for r in measured}
    if len(dtypes) > 1:
        raise UsageError(f"--calibrate: the runs use different matmul dtypes {sorted(dtypes)}; give one kind")
    hw = this_machine(torch.bfloat16 if dtypes.pop() == "bfloat16" else torch.float32)
    return calibrate(measured, hw)


def main() -> None:  # pragma: no cover
    sys.exit(app())
