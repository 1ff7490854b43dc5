"""Report stage: HTML report and terminal table from a (possibly partial) run folder."""

from __future__ import annotations

import json
import math

import pytest

from nextrl.report import plots, read_metrics, summary_table, write_report

VERDICT = "At this scale RL did not beat the FLOP-matched baseline: 31.0% vs 33.0% with thought."
IMG = '<img src="data:image/png;base64,'


def make_summary() -> dict:
    def acc(s: float) -> dict:
        return {"easy": 0.41 + s, "medium": 0.3 + s, "hard": 0.2 + s, "all": 0.3 + s}

    return {
        "nextrl_version": "0.1.0",
        "preset": "tiny",
        "run_dir": "/runs/tiny",
        "models": ["base", "baseline", "rl"],
        "accuracy": {
            "base": {"standard": acc(0.0), "with_thought": acc(-0.15)},
            "baseline": {"standard": acc(0.03), "with_thought": acc(0.03)},
            "rl": {"standard": acc(0.01), "with_thought": acc(0.01)},
        },
        "eval_counts": {"easy": 80, "medium": 90, "hard": 86, "all": 256},
        "perplexity": {"base": 12.3, "baseline": 11.9, "rl": 12.5},
        "thought_length": {"base": 9.1, "baseline": 8.7, "rl": 6.2},
        "flops": {
            "pretrain": 1.2e13,
            "rl": 3.4e12,
            "baseline": 3.4e12,
            "rl_breakdown": {"rollout": 2.0e12, "training": 1.0e12, "reference": 4.0e11},
        },
        "wall_seconds": 512.3,
        "stage_seconds": {"pretrain": 200.1, "selection": 20.3, "rl": 150.2, "baseline": 60.1, "eval": 70.2},
        "steps": {"pretrain": 300, "rl": 40, "baseline": 55},
        "tokens_per_second": {"pretrain": 5200.0, "rl": 3100.0, "baseline": 5300.0},
        "selection": {"documents": 400, "positions": {"train": 5000, "heldout": 600}},
        "rl_summary": {"reward_first": 0.1, "reward_last": 0.2, "groups_dropped": 120, "groups_kept": 520},
        "verdict": {
            "rl_beats_baseline": False,
            "metric": "with_thought/all",
            "rl": 0.31,
            "baseline": 0.33,
            "text": VERDICT,
        },
        "config": {"model": {"d_model": 64, "n_layers": 2}, "rl": {"group_size": 8, "lr": 1e-6}},
    }


def metrics_lines() -> list[str]:
    lines = []
    for s in range(0, 300, 10):
        rec = {"stage": "pretrain", "step": s, "time": s * 0.7, "loss": 6 * math.exp(-s / 100) + 2}
        lines.append(json.dumps(rec | {"lr": 1e-3, "tokens_per_second": 5200.0, "flops/total": s * 4e10}))
    for s in range(30):
        r = 0.1 + 0.1 * s / 29
        rec = {"stage": "rl", "step": s, "time": 220 + 5 * s, "reward/mean": r, "reward/std": 0.3}
        rec |= {
            "reward/prefix_match": r,
            "groups/kept": 13,
            "groups/dropped": 3,
            "thought/len_mean": 9 - s / 10,
        }
        rec |= {"loss": 0.01, "kl": 0.0, "tokens_per_second": 3100.0, "some/unknown_key": "ignored"}
        lines.append(json.dumps(rec))
    for s in range(0, 55, 5):
        rec = {
            "stage": "baseline",
            "step": s,
            "time": 400 + s,
            "loss": 2.5 - s / 100,
            "tokens_per_second": 5300.0,
        }
        lines.append(json.dumps(rec))
    lines.append('{"stage": "rl", "step": 30, "reward/me')  # crash mid-write
    return lines


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(make_summary()))
    (tmp_path / "metrics.jsonl").write_text("\n".join(metrics_lines()))  # no newline after the cut line
    return tmp_path


def test_read_metrics_skips_truncated_line(run_dir, tmp_path):
    records = read_metrics(run_dir / "metrics.jsonl")
    assert len(records) == 30 + 30 + 11
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_full_report(run_dir):
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    text = out.read_text(encoding="utf-8")
    assert VERDICT in text
    assert "41.0%" in text and "<b>33.0%</b>" in text  # base/standard/easy; best baseline with_thought/all
    assert text.count(IMG) >= 3
    assert "<script" not in text and "http" not in text  # no JavaScript, no external assets
    assert "3.40e+12" in text and "<details>" in text and "group_size" in text
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # temp file moved into place


def test_partial_run_still_renders(tmp_path):
    summary = {"preset": "tiny", "models": ["base"], "perplexity": {"base": 12.3}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert "no verdict: evaluation did not finish" in text
    assert "12.3" in text and IMG not in text
    assert "no verdict" in summary_table(summary)


def test_no_summary_at_all(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(metrics_lines()[:20]))
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert "summary.json is missing" in text and IMG in text


def test_html_escapes_summary_strings(run_dir):
    summary = make_summary() | {"preset": "<script>alert(1)</script>"}
    summary["verdict"]["text"] = "RL <b>won</b> & more"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "RL &lt;b&gt;won&lt;/b&gt; &amp; more" in text


def test_summary_table():
    table = summary_table(make_summary())
    rows = table.splitlines()
    for model in ("base", "baseline", "rl"):
        assert any(r.split()[0] == model for r in rows)
    assert VERDICT in table
    assert "33.0%" in table and "3.40e+12" in table and "512.3 s" in table
    assert len({len(r) for r in rows[:4]}) == 1  # header and model rows are fixed width


def test_series_resumed_run_last_line_wins():
    recs = [{"stage": "rl", "step": s, "loss": 1.0} for s in range(3)] + [
        {"stage": "rl", "step": 1, "loss": 2.0}
    ]
    assert plots.series(recs, "rl", "loss") == ([0, 1, 2], [1.0, 2.0, 1.0])


def test_plots_skip_missing_data():
    assert plots.reward_plot([]) is None
    assert plots.accuracy_plot({}) is None
    assert plots.all_plots({}, [{"stage": "pretrain", "step": 1}]) == []
    png = plots.reward_plot([{"stage": "rl", "step": s, "reward/mean": s / 30} for s in range(30)])
    assert png is not None and png.startswith(b"\x89PNG")


def test_control_and_thinking_sections(tmp_path):
    s = make_summary()
    s["eval_counts"]["computed"] = 120
    s["thought_length"] = {m: {"all": 3.0, "computed": 9.5, "hard": 1.0} for m in s["models"]}
    cmp = {
        "diff": 0.12,
        "p_value": 1e-4,
        "ci_low": 0.05,
        "ci_high": 0.19,
        "n": 120,
        "a_only": 20,
        "b_only": 6,
    }
    s["thought_vs_standard"] = {
        m: {"computed": dict(cmp), "hard": {**cmp, "diff": -0.01, "p_value": 0.6}} for m in s["models"]
    }
    s["control"] = {
        "bucket": "computed",
        "n": 120,
        "margin": 0.05,
        "rl_with_thought": 0.71,
        "vs_base": {"mode": "with_thought", **cmp, "passed": True},
        "vs_baseline": {"mode": "standard", **cmp, "diff": 0.03, "p_value": 0.2, "passed": False},
        "passed": False,
    }
    (tmp_path / "summary.json").write_text(json.dumps(s))
    html = write_report(tmp_path).read_text()
    assert "Positive control FAILED" in html and "71.0%" in html and "+12.0 pts" in html
    assert "Does thinking pay?" in html and "9.5 tok · +12.0 pts ▲" in html and "-1.0 pts" in html
    table = summary_table(s)
    assert (
        "th/computed" in table
        and "Positive control FAILED" in table
        and "vs baseline +3.0 pts (p = 0.2)" in table
    )
