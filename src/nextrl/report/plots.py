"""Report plots: each function returns PNG bytes, or None when the run has no data for it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers with no display; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402

from nextrl.report.table import models as model_names  # noqa: E402
from nextrl.report.table import num  # noqa: E402
from nextrl.summary import RunSummary  # noqa: E402

BUCKET_ORDER = ["easy", "medium", "hard", "computed", "all"]
MODE_ORDER = ["standard", "with_thought"]
MODE_LABELS = {"standard": "standard", "with_thought": "with thought"}
STAGE_COLORS = {"pretrain": "tab:blue", "warmup": "tab:purple", "baseline": "tab:orange", "rl": "tab:green"}
SMOOTH_MIN_POINTS = 20  # below this a moving average hides more than it shows


def read_metrics(path: str | Path) -> list[dict]:
    """Read metrics.jsonl. A missing file gives []; unparsable lines (a crash mid-write) are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    # errors="replace": a line cut inside a multi-byte character must not fail the whole file.
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records


def series(records: list[dict], stage: str, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric in one stage, in step order, skipping lines without it.

    The logger appends, so a resumed run logs some steps twice; the later line wins."""
    pts: dict[float, float] = {}
    for r in records:
        step, val = num(r.get("step")), num(r.get(key))
        if r.get("stage") == stage and step is not None and val is not None:
            pts[step] = val
    steps = sorted(pts)
    return steps, [pts[s] for s in steps]


def _smooth(values: list[float]) -> list[float]:
    """Trailing moving average; the window grows with the run so that long runs stay readable."""
    w = max(5, len(values) // 10)
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= w:
            acc -= values[i - w]
        out.append(acc / min(i + 1, w))
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)  # pyplot keeps every open figure alive otherwise
    return buf.getvalue()


def _ordered(keys, order: list[str]) -> list[str]:
    keys = list(dict.fromkeys(keys))
    return [k for k in order if k in keys] + [k for k in keys if k not in order]


def reward_plot(records: list[dict]) -> bytes | None:
    keys = {k for r in records if r.get("stage") == "rl" for k in r if k.startswith("reward/")}
    comps = sorted(keys - {"reward/mean", "reward/std"})
    steps, mean = series(records, "rl", "reward/mean")
    if not steps and not any(series(records, "rl", c)[0] for c in comps):
        return None
    fig, ax = plt.subplots(layout="constrained", figsize=(8, 4))
    if steps:
        ax.plot(steps, mean, color="black", alpha=0.35 if len(steps) > SMOOTH_MIN_POINTS else 1, label="mean")
        if len(steps) > SMOOTH_MIN_POINTS:
            ax.plot(steps, _smooth(mean), color="black", lw=2, label="mean (smoothed)")
    for c in comps:
        x, y = series(records, "rl", c)
        if x:
            ax.plot(x, y, lw=1.2, label=c.removeprefix("reward/"))
    ax.set(title="Reward over RL steps", xlabel="RL step", ylabel="reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def accuracy_plot(summary: RunSummary | None) -> bytes | None:
    if summary is None or not summary.accuracy:
        return None
    acc = {m: summary.accuracy[m].by_mode() for m in model_names(summary) if m in summary.accuracy}
    models = list(acc)
    modes = _ordered([md for m in models for md in acc[m]], MODE_ORDER)
    buckets = _ordered([b for m in models for md in acc[m].values() for b in md], BUCKET_ORDER)
    if not models or not modes or not buckets:
        return None
    # One panel per mode, so each bar group is only "one bar per model" and stays readable.
    fig, axes = plt.subplots(
        1, len(modes), layout="constrained", figsize=(5.5 * len(modes), 4), sharey=True, squeeze=False
    )
    width = 0.8 / len(models)
    colors = plt.get_cmap("tab10").colors
    for ax, mode in zip(axes[0], modes, strict=True):
        for i, model in enumerate(models):
            ys = [num(acc[model][mode].get(b)) for b in buckets]
            xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(buckets))]
            bars = ax.bar(xs, [100 * y if y is not None else 0 for y in ys], width, color=colors[i % 10])
            bars.set_label(model)
            for bar, y in zip(bars, ys, strict=True):
                if y is not None:
                    xy = (bar.get_x() + bar.get_width() / 2, bar.get_height())
                    ax.annotate(f"{100 * y:.0f}", xy, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(buckets)), buckets)
        ax.set_title(MODE_LABELS.get(mode, mode))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("next-token accuracy (%)")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.08)  # room for the value labels (y is shared)
    # One legend above both panels, so it never covers a bar.
    fig.legend(
        *axes[0][0].get_legend_handles_labels(), loc="outside upper center", ncols=len(models), fontsize=8
    )
    return _png(fig)


def _stage_lines(records: list[dict], key: str, stages, title: str, ylabel: str) -> bytes | None:
    data = {s: series(records, s, key) for s in stages}
    data = {s: xy for s, xy in data.items() if xy[0]}
    if not data:
        return None
    fig, ax = plt.subplots(layout="constrained", figsize=(8, 3.5))
    for s, (x, y) in data.items():
        ax.plot(x, y, label=s, color=STAGE_COLORS.get(s))
    ax.set(title=title, xlabel="step (per stage)", ylabel=ylabel)
    ax.set_ylim(bottom=0)  # rates and lengths: a zero baseline keeps changes in proportion
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def thought_length_plot(records: list[dict]) -> bytes | None:
    return _stage_lines(records, "thought/len_mean", ["rl"], "Thought length over RL steps", "tokens")


def throughput_plot(records: list[dict]) -> bytes | None:
    stages = _ordered(
        [r.get("stage") for r in records if isinstance(r.get("stage"), str)], list(STAGE_COLORS)
    )
    return _stage_lines(records, "tokens_per_second", stages, "Throughput", "tokens / s")


def loss_plot(records: list[dict]) -> bytes | None:
    # NLL (pretrain, the format warm-up, baseline) and the RL policy loss are on different scales: separate panels.
    nll = {s: series(records, s, "loss") for s in ("pretrain", "warmup", "baseline")}
    nll = {s: xy for s, xy in nll.items() if xy[0]}
    rl = series(records, "rl", "loss")
    panels = [p for p in (nll, {"rl": rl} if rl[0] else {}) if p]
    if not panels:
        return None
    fig, axes = plt.subplots(
        1, len(panels), layout="constrained", figsize=(5.5 * len(panels), 3.5), squeeze=False
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        for s, (x, y) in panel.items():
            ax.plot(x, y, label=s, color=STAGE_COLORS.get(s))
        ax.set(xlabel="step (per stage)", ylabel="loss")
        ax.set_title("RL loss" if "rl" in panel else "Next-token loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def groups_plot(records: list[dict]) -> bytes | None:
    kept, dropped = series(records, "rl", "groups/kept"), series(records, "rl", "groups/dropped")
    if not kept[0] and not dropped[0]:
        return None
    fig, ax = plt.subplots(layout="constrained", figsize=(8, 3.5))
    ax.plot(*kept, label="kept", color="tab:green")
    ax.plot(*dropped, label="dropped (all rewards equal)", color="tab:red")
    ax.set(title="GRPO groups per RL step", xlabel="RL step", ylabel="groups")
    ax.grid(alpha=0.3)
    signal = series(records, "rl", "groups/signal_fraction")
    if signal[0]:  # on its own axis: a fraction, next to counts
        ax2 = ax.twinx()
        ax2.plot(signal[0], _smooth(signal[1]), color="tab:blue", lw=1.5, label="signal fraction (smoothed)")
        ax2.set(ylabel="drawn groups with signal", ylim=(0, 1))
        ax2.legend(fontsize=8, loc="upper right")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def domain_names(records: list[dict]) -> list[str]:
    """The domains of a mixture run (`domain/<name>/reward` in the RL metrics), in first-seen order."""
    keys = [k for r in records if r.get("stage") == "rl" for k in r if k.startswith("domain/")]
    return list(dict.fromkeys(k.split("/")[1] for k in keys if k.endswith("/reward")))


def domains_plot(records: list[dict]) -> bytes | None:
    """Per domain of a mixture: reward, accuracy and signal fraction over RL steps (smoothed when long)."""
    names = domain_names(records)
    if not names:
        return None
    metrics = [
        ("reward", "reward"),
        ("accuracy", "accuracy (correct samples)"),
        ("signal_fraction", "signal"),
    ]
    fig, axes = plt.subplots(1, 3, layout="constrained", figsize=(11, 3.5))
    for ax, (key, label) in zip(axes, metrics, strict=True):
        for i, d in enumerate(names):
            x, y = series(records, "rl", f"domain/{d}/{key}")
            if x:
                ax.plot(x, _smooth(y) if len(y) > SMOOTH_MIN_POINTS else y, label=d, color=f"C{i}")
        ax.set(title=label, xlabel="RL step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def all_plots(summary: RunSummary | None, records: list[dict]) -> list[tuple[str, bytes]]:
    """(title, png) for every plot that has data, in report order."""
    plots = [
        ("Accuracy per bucket", accuracy_plot(summary)),
        ("Reward", reward_plot(records)),
        ("Per domain (mixture)", domains_plot(records)),
        ("Thought length", thought_length_plot(records)),
        ("Training loss", loss_plot(records)),
        ("Groups kept / dropped", groups_plot(records)),
        ("Throughput", throughput_plot(records)),
    ]
    return [(t, p) for t, p in plots if p is not None]
