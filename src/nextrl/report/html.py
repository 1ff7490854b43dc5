"""Self-contained HTML report of a run folder: inline CSS, plots as data URIs, no JavaScript.

The figures come from summary.json read as a `RunSummary`; a missing or invalid summary still gives a page
(with a warning saying why) that shows what metrics.jsonl has."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import yaml

from nextrl.report.plots import (
    BUCKET_ORDER,
    MODE_LABELS,
    MODE_ORDER,
    all_plots,
    domain_names,
    read_metrics,
    series,
)
from nextrl.report.table import (
    NO_BASELINE,
    NO_VERDICT,
    models,
    num,
    pct,
    sci,
    thinking_notes,
    verdict_text,
)
from nextrl.summary import RunSummary, SummaryError
from nextrl.utils.io import atomic_write_text

STAGE_ORDER = ["pretrain", "warmup", "selection", "rl", "baseline", "eval"]

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } .meta { color: #666; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { background: #f3f3f3; }
tr.counts td { color: #777; font-style: italic; }
.verdict { padding: .8em 1em; border-radius: 6px; border-left: 6px solid; margin: 1em 0; font-size: 1.1em; }
.win { background: #e8f6ea; border-color: #2e7d32; } .loss { background: #fdecea; border-color: #c62828; }
.none, .note { background: #f1f1f1; border-color: #888; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { color: #666; font-size: .9em; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""


def _fmt(x: Any) -> str:
    """Escaped display form of any summary value."""
    if isinstance(x, bool) or x is None:
        return escape(str(x))
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.3e}" if x and not 1e-3 <= abs(x) < 1e6 else f"{x:.4g}"
    return escape(str(x))


def _row(*cells: str, cls: str = "") -> str:
    """A table row of already-escaped cells."""
    attr = f" class='{cls}'" if cls else ""
    return f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out += _flatten(v, f"{key}.") if isinstance(v, dict) else [(key, v)]
    return out


def _kv_table(d: dict[str, Any]) -> str:
    if not d:
        return "<p>not recorded</p>"
    rows = "".join(_row(escape(k), _fmt(v)) for k, v in _flatten(d))
    return f"<table>{rows}</table>"


def _header(summary: RunSummary | None, run_dir: Path) -> str:
    if summary is None:  # no readable summary: its write time (or now) stands in for when the run ended
        src = run_dir / "summary.json"
        ts = src.stat().st_mtime if src.exists() else datetime.now().timestamp()
        date = datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")
        preset, version, wall, where = "unknown", "?", None, str(run_dir)
    else:
        date, preset, version = summary.date, summary.preset, summary.nextrl_version
        wall, where = num(summary.wall_seconds), summary.run_dir
    wall_s = "not recorded" if wall is None else f"{wall:.1f} s ({wall / 60:.1f} min)"
    meta = [
        f"preset <b>{_fmt(preset)}</b>",
        f"date {_fmt(date)}",
        f"wall time {wall_s}",
        f"nextrl {_fmt(version)}",
        f"run <code>{escape(where)}</code>",
    ]
    return f"<h1>nextrl run report</h1><p class='meta'>{' · '.join(meta)}</p>"


def _verdict(summary: RunSummary | None) -> str:
    v, text = (summary.verdict if summary is not None else None), verdict_text(summary)
    # Colour only a definite answer; a missing verdict stays neutral grey.
    cls = (
        "none"
        if v is None or text in (NO_VERDICT, NO_BASELINE)
        else ("win" if v.rl_beats_baseline else "loss")
    )
    detail = ""
    if v is not None and num(v.rl) is not None and num(v.baseline) is not None:
        detail = (
            f"<br><small>{_fmt(v.metric)}: RL {pct(v.rl)} vs FLOP-matched baseline {pct(v.baseline)}</small>"
        )
    return f"<div class='verdict {cls}'>{escape(text)}{detail}</div>"


def _accuracy(summary: RunSummary) -> str:
    acc = {m: summary.accuracy[m].by_mode() for m in models(summary) if m in summary.accuracy}
    names = list(acc)
    if not names:
        return "<p>not recorded (evaluation did not finish)</p>"
    found = [md for n in names for md in acc[n]]
    modes = [md for md in dict.fromkeys([*MODE_ORDER, *found]) if md in found]
    # Known buckets first in difficulty order; columns nobody has a number for are dropped below.
    buckets = dict.fromkeys([*BUCKET_ORDER, *(b for n in names for md in modes for b in acc[n][md])])
    cols = [(md, b) for md in modes for b in buckets]
    cols = [(md, b) for md, b in cols if any(num(acc[n][md].get(b)) is not None for n in names)]
    grid = {n: [num(acc[n][md].get(b)) for md, b in cols] for n in names}
    # Bold by the printed value, so that two models that read the same are both marked best.
    best = [
        pct(max((v for v in col if v is not None), default=None)) for col in zip(*grid.values(), strict=True)
    ]
    head1 = "".join(
        f"<th colspan='{sum(c[0] == md for c in cols)}'>{escape(MODE_LABELS.get(md, md))}</th>"
        for md in modes
        if any(c[0] == md for c in cols)
    )
    head2 = "".join(f"<th>{escape(b)}</th>" for _, b in cols)
    se = {m: v.by_mode() for m, v in summary.accuracy_stderr.items()}

    def cell(n: str, c: tuple[str, str], v: float | None, top: str) -> str:
        text = f"<b>{pct(v)}</b>" if v is not None and pct(v) == top else pct(v)
        e = num(se[n][c[0]].get(c[1])) if n in se else None
        return text + (f"<small> ±{100 * e:.1f}</small>" if v is not None and e is not None else "")

    rows = [
        _row(escape(n), *(cell(n, c, v, top) for c, v, top in zip(cols, vals, best, strict=True)))
        for n, vals in grid.items()
    ]
    counts = summary.eval_counts
    rows.append(_row("positions", *(_fmt(counts.get(b, "-")) for _, b in cols), cls="counts"))
    return (
        f"<table><thead><tr><th rowspan='2'>model</th>{head1}</tr><tr>{head2}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _control(summary: RunSummary) -> str:
    """The positive control's pass rule, with both paired tests (only when the run had `computed` positions)."""
    c = summary.control
    if c is None:
        return ""
    rows = []
    for v, label in ((c.vs_base, "base model, with thought"), (c.vs_baseline, "FLOP-matched baseline")):
        if v is not None:
            rows.append(
                _row(
                    escape(label) + f" ({escape(v.mode)})",
                    f"{100 * (num(v.diff) or 0):+.1f} pts",
                    f"{pct(v.ci_low)} to {pct(v.ci_high)}",
                    _fmt(v.p_value),
                    "-" if num(v.detectable) is None else f"{100 * v.detectable:.1f} pts",
                    "yes" if v.passed else "no",
                )
            )
    head = (
        "<tr><th>RL with thought vs</th><th>difference</th><th>95% interval</th><th>McNemar p</th>"
        "<th>detectable (80% power)</th><th>passed</th></tr>"
    )
    text = (
        f"Positive control {'passed' if c.passed else 'FAILED'}: RL's with-thought accuracy on the "
        f"{_fmt(c.n)} held-out '{escape(c.bucket)}' positions is {pct(c.rl_with_thought)}; "
        f"the rule is at least {100 * (num(c.margin) or 0):.0f} points above each, p < 0.01."
    )
    return (
        f"<h2>Positive control</h2><div class='verdict {'win' if c.passed else 'loss'}'>{text}</div>"
        f"<table><thead>{head}</thead>{''.join(rows)}</table>"
    )


def _thinking(summary: RunSummary) -> str:
    """Per model and bucket: thought length, and whether the model's thought helps its own prediction."""
    tv, tl = summary.thought_vs_standard, summary.thought_length
    names = [m for m in models(summary) if m in tv]
    buckets = [b for b in BUCKET_ORDER if any(b in tv[m] for m in names)]
    head = "<tr><th>model</th>" + "".join(f"<th>{escape(b)}</th>" for b in buckets) + "</tr>"
    rows = []
    for m in names:
        cells = []
        for b in buckets:
            v, n = tv[m].get(b), num(tl.get(m, {}).get(b))
            if v is None:
                cells.append("-")
                continue
            d, p = num(v.diff), num(v.p_value)
            mark = "" if p is None or p >= 0.01 else (" ▲" if (d or 0) > 0 else " ▼")
            length = "" if n is None else f"{n:.1f} tok · "
            seen = num(v.detectable)
            power = "" if seen is None else f" <small>(sees ≥{100 * seen:.0f})</small>"
            cells.append(f"{length}{100 * (d or 0):+.1f} pts{mark}{power}")
        rows.append(_row(escape(m), *cells))
    notes = "".join(f"<p class='verdict note'>{escape(n)}</p>" for n in thinking_notes(summary))
    return (
        "<h2>Does thinking pay?</h2><p>Per bucket: mean thought length (tokens, the format's closing "
        "delimiter included), and with-thought minus standard accuracy of the same model on the same positions "
        "(▲/▼: significant, McNemar p &lt; 0.01; sees ≥N: the smallest difference in points that this many "
        "positions detect with 80% power).</p>"
        f"{notes}<table><thead>{head}</thead>{''.join(rows)}</table>"
    )


def _ppl(summary: RunSummary) -> str:
    def length(n: str) -> float | None:
        return num(summary.thought_length.get(n, {}).get("all"))

    def ppl(n: str) -> float | None:
        return num(summary.perplexity.get(n))

    names = [m for m in models(summary) if ppl(m) is not None or length(m) is not None]
    if not names:
        return "<p>not recorded</p>"

    def gain(n: str) -> str:
        g = summary.information_gain.get(n)
        mean, se = (None, None) if g is None else (num(g.mean), num(g.stderr))
        if mean is None:
            return "-"
        return f"{mean:+.3f}" + (f" ± {se:.3f}" if se is not None else "")

    rows = "".join(_row(escape(n), _fmt(ppl(n)), _fmt(length(n)), gain(n)) for n in names)
    head = (
        "<tr><th>model</th><th>perplexity</th><th>thought length (tokens)</th>"
        "<th>information gain (nats/position that the thought buys, ± s.e.)</th></tr>"
    )
    return f"<table><thead>{head}</thead>{rows}</table>"


def _seconds(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def _compute(summary: RunSummary) -> str:
    # stage -> figure; a stage that did not run (no baseline) has no entry and shows "-"
    sections: dict[str, dict[str, Any]] = {
        "flops": summary.flops.model_dump(exclude={"rl_breakdown"}),
        "stage_seconds": summary.stage_seconds.model_dump(),
        "tokens_per_second": summary.tokens_per_second.model_dump(),
        "steps": summary.steps.model_dump(),
    }
    stages = [s for s in STAGE_ORDER if any(s in d for d in sections.values())]
    stages += [s for d in sections.values() for s in d if s not in stages]
    rows = []
    for s in dict.fromkeys(stages):
        f, w, t, n = (sections[k].get(s) for k in ("flops", "stage_seconds", "tokens_per_second", "steps"))
        wall = "-" if num(w) is None else f"{num(w):.1f}"
        tps = "-" if num(t) is None else f"{num(t):,.0f}"
        rows.append(_row(escape(s), sci(f), wall, tps, "-" if n is None else _fmt(n)))
        if s == "rl":  # where the RL FLOPs went, right under its total
            secs = summary.rl_summary.stage_seconds  # where its time went, by the same passes
            rows += [
                _row(f"&nbsp;&nbsp;rl: {escape(k)}", sci(v), _seconds(secs.get(k)), "", "")
                for k, v in summary.flops.rl_breakdown.items()
                if num(v) or secs.get(k)  # a pass that did not run (no KL reference, say) is left out
            ]
            rows += [
                _row(f"&nbsp;&nbsp;rl: {escape(k)}", "-", _seconds(v), "", "")
                for k, v in secs.items()
                if k not in summary.flops.rl_breakdown
            ]
    head = "<tr><th>stage</th><th>FLOPs</th><th>wall s</th><th>tokens/s</th><th>steps</th></tr>"
    rl, base = num(summary.flops.rl), num(summary.flops.baseline)
    note = f"<p>RL / baseline FLOPs: {rl / base:.2f} (1.00 = matched)</p>" if rl is not None and base else ""
    lm_coef = num(((summary.config or {}).get("rl") or {}).get("lm_coef"))
    if lm_coef and not num(summary.flops.rl_breakdown.get("lm")) and summary.flops.rl_breakdown:
        note += (
            "<p>The next-token term (rl.lm_coef) is trained inside the loss passes: with prefix sharing its "
            "text is the prompts' own prefix trees.</p>"
        )
    r = summary.rl_summary
    mfu_t, mfu_r, peak = num(r.mfu_training), num(r.mfu_rollout), num(r.matmul_peak_flops)
    if mfu_t is not None and mfu_r is not None and peak:
        note += (
            f"<p>RL model FLOPs utilisation: training {mfu_t:.1%}, generation {mfu_r:.1%} of the measured "
            f"matmul peak ({peak / 1e9:,.0f} GFLOP/s)</p>"
        )
    return f"<table><thead>{head}</thead>{''.join(rows)}</table>{note}"


def _config(summary: RunSummary) -> str:
    cfg = summary.config
    try:
        text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:  # objects YAML cannot represent: JSON with str() fallback still shows them
        text = json.dumps(cfg, indent=2, default=str)
    return f"<details><summary>resolved config</summary><pre>{escape(text)}</pre></details>"


def _domains(records: list[dict]) -> str:
    """A mixture's domains side by side: reward, accuracy and signal fraction over the first and the last
    quarter of the RL steps, the groups drawn and the share of tasks at the end (empty for one domain)."""
    names = domain_names(records)
    if not names:
        return ""

    def early_late(key: str) -> tuple[str, str]:
        _, y = series(records, "rl", key)
        if not y:
            return "–", "–"
        q = max(1, len(y) // 4)
        return _fmt(sum(y[:q]) / q), _fmt(sum(y[-q:]) / q)

    head = [
        "domain",
        "reward first ¼",
        "reward last ¼",
        "accuracy first ¼",
        "accuracy last ¼",
        "signal first ¼",
        "signal last ¼",
        "groups",
    ]
    rows = []
    for d in names:
        groups = sum(series(records, "rl", f"domain/{d}/groups")[1])
        cells = [
            c for key in ("reward", "accuracy", "signal_fraction") for c in early_late(f"domain/{d}/{key}")
        ]
        rows.append(_row(escape(d), *cells, _fmt(int(groups))))
    shares = {
        k.split("/")[1]: v
        for k, v in next((r for r in reversed(records) if r.get("stage") == "rl"), {}).items()
        if k.startswith("positions/") and k.endswith("/share")
    }
    share_text = ", ".join(f"{escape(k)} {v:.0%}" for k, v in shares.items())
    return (
        "<h2>Domains</h2><p>Each environment of the mixture on its own: accuracy counts the samples its "
        "correctness term (correct, passed, prefix_match) calls right; signal is the share of its groups whose "
        "rewards differ, the only groups GRPO learns from."
        + (f" Share of tasks at the last step: {share_text}." if share_text else "")
        + "</p><table><thead><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr></thead>"
        + "".join(rows)
        + "</table>"
    )


def _plots(summary: RunSummary | None, records: list[dict]) -> str:
    figs = [
        f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{escape(t)}">'
        f"<figcaption>{escape(t)}</figcaption></figure>"
        for t, png in all_plots(summary, records)
    ]
    return "".join(figs) or "<p>no metrics recorded</p>"


def _load_summary(run_dir: Path) -> tuple[RunSummary | None, str]:
    """The run's summary, or None and why (the report then shows what the metrics have)."""
    path = run_dir / "summary.json"
    if not path.exists():
        return None, "summary.json is missing: the run did not finish; showing what the metrics have."
    try:
        return RunSummary.load(path), ""
    except SummaryError as e:
        return None, f"{e}; showing what the metrics have."


def render(summary: RunSummary | None, records: list[dict], run_dir: Path, warning: str = "") -> str:
    """The report page; without a summary only the header, the warning and the metrics' plots have content."""
    title = f"nextrl report: {summary.preset if summary is not None else 'run'}"
    missing = "<p>not recorded</p>"
    body = [
        _header(summary, run_dir),
        f"<p class='verdict none'>{escape(warning)}</p>" if warning else "",
        _verdict(summary),
        _control(summary) if summary is not None else "",
        "<h2>Next-token accuracy</h2>",
        _accuracy(summary) if summary is not None else "<p>not recorded (evaluation did not finish)</p>",
        _thinking(summary) if summary is not None else "",
        "<h2>Perplexity, thought length and information gain</h2>",
        _ppl(summary) if summary is not None else missing,
        "<h2>Compute</h2>",
        _compute(summary) if summary is not None else missing,
        _domains(records),
        "<h2>Position selection</h2>",
        _kv_table(summary.selection.model_dump()) if summary is not None else missing,
        "<h2>RL summary</h2>",
        _kv_table(summary.rl_summary.model_dump()) if summary is not None else missing,
        "<h2>Plots</h2>",
        _plots(summary, records),
        "<h2>Config</h2>",
        _config(summary) if summary is not None else missing,
    ]
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(str(title))}</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report.html` from summary.json and metrics.jsonl (either may be missing or partial)."""
    run_dir = Path(run_dir)
    summary, warning = _load_summary(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    out = run_dir / "report.html"
    atomic_write_text(out, render(summary, records, run_dir, warning))
    return out
