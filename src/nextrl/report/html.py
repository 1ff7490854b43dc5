"""Self-contained HTML report of a run folder: inline CSS, plots as data URIs, no JavaScript."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import yaml

from nextrl.report.plots import BUCKET_ORDER, MODE_LABELS, MODE_ORDER, all_plots, read_metrics
from nextrl.report.table import NO_VERDICT, get, models, num, pct, sci, verdict_text
from nextrl.utils.io import atomic_write_text

STAGE_ORDER = ["pretrain", "selection", "rl", "baseline", "eval"]

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } .meta { color: #666; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { background: #f3f3f3; }
tr.counts td { color: #777; font-style: italic; }
.verdict { padding: .8em 1em; border-radius: 6px; border-left: 6px solid; margin: 1em 0; font-size: 1.1em; }
.win { background: #e8f6ea; border-color: #2e7d32; } .loss { background: #fdecea; border-color: #c62828; }
.none { background: #f1f1f1; border-color: #888; }
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


def _kv_table(d: Any) -> str:
    if not isinstance(d, dict) or not d:
        return "<p>not recorded</p>"
    rows = "".join(_row(escape(k), _fmt(v)) for k, v in _flatten(d))
    return f"<table>{rows}</table>"


def _header(summary: dict, run_dir: Path) -> str:
    date = summary.get("date")
    if not date:  # summary.json does not carry a date: its write time is when the run ended
        src = run_dir / "summary.json"
        ts = src.stat().st_mtime if src.exists() else datetime.now().timestamp()
        date = datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")
    wall = num(summary.get("wall_seconds"))
    wall_s = "not recorded" if wall is None else f"{wall:.1f} s ({wall / 60:.1f} min)"
    meta = [
        f"preset <b>{_fmt(summary.get('preset', 'unknown'))}</b>",
        f"date {_fmt(date)}",
        f"wall time {wall_s}",
        f"nextrl {_fmt(summary.get('nextrl_version', '?'))}",
        f"run <code>{escape(str(summary.get('run_dir', run_dir)))}</code>",
    ]
    return f"<h1>nextrl run report</h1><p class='meta'>{' · '.join(meta)}</p>"


def _verdict(summary: dict) -> str:
    beats, text = get(summary, "verdict", "rl_beats_baseline"), verdict_text(summary)
    # Colour only a definite answer; a missing or malformed verdict stays neutral grey.
    cls = "none" if text == NO_VERDICT or not isinstance(beats, bool) else ("win" if beats else "loss")
    detail = ""
    metric, rl, base = (get(summary, "verdict", k) for k in ("metric", "rl", "baseline"))
    if num(rl) is not None and num(base) is not None:
        detail = f"<br><small>{_fmt(metric)}: RL {pct(rl)} vs FLOP-matched baseline {pct(base)}</small>"
    return f"<div class='verdict {cls}'>{escape(text)}{detail}</div>"


def _accuracy(summary: dict) -> str:
    acc = summary.get("accuracy")
    names = [m for m in models(summary) if isinstance(get(acc, m), dict)]
    if not names:
        return "<p>not recorded (evaluation did not finish)</p>"
    found = [md for n in names for md, v in acc[n].items() if isinstance(v, dict)]
    modes = [md for md in dict.fromkeys([*MODE_ORDER, *found]) if md in found]
    # Known buckets first in difficulty order; columns nobody has a number for are dropped below.
    buckets = dict.fromkeys(
        [*BUCKET_ORDER, *(b for n in names for md in modes for b in get(acc, n, md) or {})]
    )
    cols = [(md, b) for md in modes for b in buckets]
    cols = [(md, b) for md, b in cols if any(num(get(acc, n, md, b)) is not None for n in names)]
    grid = {n: [num(get(acc, n, *c)) for c in cols] for n in names}
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
    se = summary.get("accuracy_stderr")

    def cell(n: str, c: tuple[str, str], v: float | None, top: str) -> str:
        text = f"<b>{pct(v)}</b>" if v is not None and pct(v) == top else pct(v)
        e = num(get(se, n, *c))
        return text + (f"<small> ±{100 * e:.1f}</small>" if v is not None and e is not None else "")

    rows = [
        _row(escape(n), *(cell(n, c, v, top) for c, v, top in zip(cols, vals, best, strict=True)))
        for n, vals in grid.items()
    ]
    counts = summary.get("eval_counts")
    if isinstance(counts, dict):
        rows.append(_row("positions", *(_fmt(counts.get(b, "-")) for _, b in cols), cls="counts"))
    return (
        f"<table><thead><tr><th rowspan='2'>model</th>{head1}</tr><tr>{head2}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _control(summary: dict) -> str:
    """The positive control's pass rule, with both paired tests (only when the run had `computed` positions)."""
    c = summary.get("control")
    if not isinstance(c, dict):
        return ""
    passed = c.get("passed") is True
    rows = []
    for key, label in (("vs_base", "base model, with thought"), ("vs_baseline", "FLOP-matched baseline")):
        v = c.get(key)
        if isinstance(v, dict):
            ci = f"{pct(v.get('ci_low'))} to {pct(v.get('ci_high'))}"
            rows.append(
                _row(
                    escape(label) + f" ({escape(str(v.get('mode')))})",
                    f"{100 * (num(v.get('diff')) or 0):+.1f} pts",
                    ci,
                    _fmt(v.get("p_value")),
                    "yes" if v.get("passed") else "no",
                )
            )
    head = "<tr><th>RL with thought vs</th><th>difference</th><th>95% interval</th><th>McNemar p</th><th>passed</th></tr>"
    text = (
        f"Positive control {'passed' if passed else 'FAILED'}: RL's with-thought accuracy on the "
        f"{_fmt(c.get('n'))} held-out '{escape(str(c.get('bucket')))}' positions is {pct(c.get('rl_with_thought'))}; "
        f"the rule is at least {100 * (num(c.get('margin')) or 0):.0f} points above each, p < 0.01."
    )
    return (
        f"<h2>Positive control</h2><div class='verdict {'win' if passed else 'loss'}'>{text}</div>"
        f"<table><thead>{head}</thead>{''.join(rows)}</table>"
    )


def _thinking(summary: dict) -> str:
    """Per model and bucket: thought length, and whether the model's thought helps its own prediction."""
    tv, tl = summary.get("thought_vs_standard"), summary.get("thought_length")
    if not isinstance(tv, dict):
        return ""
    names = [m for m in models(summary) if isinstance(tv.get(m), dict)]
    buckets = [b for b in BUCKET_ORDER if any(isinstance(get(tv, m, b), dict) for m in names)]
    head = "<tr><th>model</th>" + "".join(f"<th>{escape(b)}</th>" for b in buckets) + "</tr>"
    rows = []
    for m in names:
        cells = []
        for b in buckets:
            v, n = get(tv, m, b), num(get(tl, m, b))
            if not isinstance(v, dict):
                cells.append("-")
                continue
            d, p = num(v.get("diff")), num(v.get("p_value"))
            mark = "" if p is None or p >= 0.01 else (" ▲" if (d or 0) > 0 else " ▼")
            length = "" if n is None else f"{n:.1f} tok · "
            cells.append(f"{length}{100 * (d or 0):+.1f} pts{mark}")
        rows.append(_row(escape(m), *cells))
    return (
        "<h2>Does thinking pay?</h2><p>Per bucket: mean thought length (tokens, <code>&lt;/think&gt;</code> "
        "included), and with-thought minus standard accuracy of the same model on the same positions "
        "(▲/▼: significant, McNemar p &lt; 0.01).</p>"
        f"<table><thead>{head}</thead>{''.join(rows)}</table>"
    )


def _ppl(summary: dict) -> str:
    def length(n: str) -> float | None:  # per bucket now ({"all": ...}); a plain number in older summaries
        v = get(summary, "thought_length", n)
        return num(v.get("all")) if isinstance(v, dict) else num(v)

    names = [
        m for m in models(summary) if num(get(summary, "perplexity", m)) is not None or length(m) is not None
    ]
    if not names:
        return "<p>not recorded</p>"

    def gain(n: str) -> str:
        mean, se = (
            num(get(summary, "information_gain", n, "mean")),
            num(get(summary, "information_gain", n, "stderr")),
        )
        if mean is None:
            return "-"
        return f"{mean:+.3f}" + (f" ± {se:.3f}" if se is not None else "")

    rows = "".join(
        _row(
            escape(n),
            _fmt(num(get(summary, "perplexity", n))),
            _fmt(length(n)),
            gain(n),
        )
        for n in names
    )
    head = (
        "<tr><th>model</th><th>perplexity</th><th>thought length (tokens)</th>"
        "<th>information gain (nats/position that the thought buys, ± s.e.)</th></tr>"
    )
    return f"<table><thead>{head}</thead>{rows}</table>"


def _compute(summary: dict) -> str:
    sections = {
        k: summary.get(k) if isinstance(summary.get(k), dict) else {}
        for k in ("flops", "stage_seconds", "tokens_per_second", "steps")
    }
    stages = [s for s in STAGE_ORDER if any(s in d for d in sections.values())]
    stages += [s for d in sections.values() for s in d if s not in stages and s != "rl_breakdown"]
    if not stages:
        return "<p>not recorded</p>"
    rows = []
    for s in dict.fromkeys(stages):
        f, w, t, n = (get(sections, k, s) for k in ("flops", "stage_seconds", "tokens_per_second", "steps"))
        wall = "-" if num(w) is None else f"{num(w):.1f}"
        tps = "-" if num(t) is None else f"{num(t):,.0f}"
        rows.append(_row(escape(s), sci(f), wall, tps, "-" if n is None else _fmt(n)))
        breakdown = get(summary, "flops", "rl_breakdown")
        if s == "rl" and isinstance(breakdown, dict):  # where the RL FLOPs went, right under its total
            rows += [_row(f"&nbsp;&nbsp;rl: {escape(k)}", sci(v), "", "", "") for k, v in breakdown.items()]
    head = "<tr><th>stage</th><th>FLOPs</th><th>wall s</th><th>tokens/s</th><th>steps</th></tr>"
    rl, base = num(get(summary, "flops", "rl")), num(get(summary, "flops", "baseline"))
    note = f"<p>RL / baseline FLOPs: {rl / base:.2f} (1.00 = matched)</p>" if rl is not None and base else ""
    mfu_t, mfu_r = (
        num(get(summary, "rl_summary", "mfu_training")),
        num(get(summary, "rl_summary", "mfu_rollout")),
    )
    peak = num(get(summary, "rl_summary", "matmul_peak_flops"))
    if mfu_t is not None and mfu_r is not None and peak:
        note += (
            f"<p>RL model FLOPs utilisation: training {mfu_t:.1%}, generation {mfu_r:.1%} of the measured "
            f"matmul peak ({peak / 1e9:,.0f} GFLOP/s)</p>"
        )
    return f"<table><thead>{head}</thead>{''.join(rows)}</table>{note}"


def _config(summary: dict) -> str:
    cfg = summary.get("config")
    if cfg is None:
        return "<p>not recorded</p>"
    try:
        text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:  # objects YAML cannot represent: JSON with str() fallback still shows them
        text = json.dumps(cfg, indent=2, default=str)
    return f"<details><summary>resolved config</summary><pre>{escape(text)}</pre></details>"


def _plots(summary: dict, records: list[dict]) -> str:
    figs = [
        f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{escape(t)}">'
        f"<figcaption>{escape(t)}</figcaption></figure>"
        for t, png in all_plots(summary, records)
    ]
    return "".join(figs) or "<p>no metrics recorded</p>"


def _load_summary(run_dir: Path) -> tuple[dict, str]:
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, "summary.json is missing: the run did not finish; showing what the metrics have."
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}, "summary.json is unreadable; showing what the metrics have."
    if not isinstance(summary, dict):
        return {}, "summary.json is not an object; showing what the metrics have."
    return summary, ""


def render(summary: dict, records: list[dict], run_dir: Path, warning: str = "") -> str:
    title = f"nextrl report: {summary.get('preset', 'run')}"
    body = [
        _header(summary, run_dir),
        f"<p class='verdict none'>{escape(warning)}</p>" if warning else "",
        _verdict(summary),
        _control(summary),
        "<h2>Next-token accuracy</h2>",
        _accuracy(summary),
        _thinking(summary),
        "<h2>Perplexity, thought length and information gain</h2>",
        _ppl(summary),
        "<h2>Compute</h2>",
        _compute(summary),
        "<h2>Position selection</h2>",
        _kv_table(summary.get("selection")),
        "<h2>RL summary</h2>",
        _kv_table(summary.get("rl_summary")),
        "<h2>Plots</h2>",
        _plots(summary, records),
        "<h2>Config</h2>",
        _config(summary),
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
