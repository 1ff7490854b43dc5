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
) -> None:
    """Merge checkpoints into one Hugging Face checkpoint (mergekit; see nextrl.model.merge for the methods)."""
    from nextrl.model.merge import merge_models

    try:
        path = merge_models(models, out, method, base, weight, density, seed)
    except NextRLError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(e.exit_code) from None
    typer.echo(f"merged {len(models)} model(s) with {method} into {path}")


@app.command(name="eval")
def eval_models(
    models: Annotated[
        list[Path], typer.Argument(help="Hugging Face model folders (the run's tokenizer inside)")
    ],
    preset: PresetOpt = "micro",
    overrides: SetOpt = None,
    samples: Annotated[int, typer.Option("--samples", "-n", help="samples per problem")] = 4,
    k: Annotated[list[int] | None, typer.Option("--k", help="k of pass@k (repeatable)")] = None,
    problems: Annotated[int, typer.Option(help="problems evaluated")] = 64,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.8,
) -> None:
    """pass@k of models on the environment the config names (math, code): e.g.
    nextrl eval merged --set env.name=math --set 'env.options={path: gsm8k/test.jsonl}' --k 1 --k 4"""
    import torch

    from nextrl.engine import build_engine
    from nextrl.env import build_environment
    from nextrl.eval.passk import evaluate_pass_at_k
    from nextrl.model.build import load_model
    from nextrl.model.tokenizer import load_tokenizer

    cfg = _config(preset, overrides)
    ks = k or [1]
    if any(x < 1 or x > samples for x in ks):
        typer.secho(f"error: every --k must be between 1 and --samples ({samples}): {ks}", fg="red", err=True)
        raise typer.Exit(2)
    rows = []
    try:
        for path in models:
            if not (Path(path) / "config.json").is_file():
                raise UsageError(f"{path} is not a Hugging Face model folder (no config.json)")
            try:
                tok = load_tokenizer(str(path))
            except (OSError, ValueError) as e:
                raise UsageError(f"{path}: no tokenizer to load ({e})") from None
            model = load_model(path, vocab_size=len(tok), key=f"model {path}").eval()
            env = build_environment(cfg, tok)
            source = env.task_source(cfg)
            if source is None:
                raise NextRLError(
                    f"env '{env.name}' has no problems of its own to evaluate (use math or code)"
                )
            engine = build_engine(cfg.sampling, cfg.sharing, model, tok.pad_token_id, None, seed=cfg.seed)
            with torch.no_grad():
                res = evaluate_pass_at_k(env, engine, source, problems, samples, ks, temperature)
            rows.append((str(path), res))
    except NextRLError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(e.exit_code) from None
    typer.echo("model".ljust(40) + "".join(f"pass@{x}".rjust(16) for x in ks))
    for name, res in rows:
        cells = "".join(
            f"{res[f'pass@{x}']['mean']:.1%} ± {res[f'pass@{x}']['stderr']:.1%}".rjust(16) for x in ks
        )
        typer.echo(name[-40:].ljust(40) + cells)
    typer.echo(f"({rows[0][1]['problems'] if rows else 0} problems, {samples} samples each)")


def main() -> None:  # pragma: no cover
    sys.exit(app())
