"""Report stage and the summary.json schema: HTML report, terminal table and `nextrl report` from a real micro
run (the session's `micro_run`, tests/conftest.py), and what happens when summary.json is missing or invalid."""

from __future__ import annotations

import copy
import json
import math
import shutil
from html import escape

import pytest
from typer.testing import CliRunner

from nextrl.cli import app
from nextrl.eval.heldout import control_check, summarize, verdict
from nextrl.report import plots, read_metrics, summary_table, write_report
from nextrl.report.table import NO_VERDICT, pct, sci
from nextrl.summary import SCHEMA_VERSION, RunSummary, SummaryError

IMG = '<img src="data:image/png;base64,'


@pytest.fixture
def real(micro_run) -> dict:
    """A fresh copy of the real run's summary.json, as plain JSON."""
    return json.loads((micro_run / "summary.json").read_text())


@pytest.fixture
def run_dir(micro_run, tmp_path):
    """A copy of the real run's summary and metrics (the tests rewrite report.html, never the shared run)."""
    for name in ("summary.json", "metrics.jsonl"):
        shutil.copy(micro_run / name, tmp_path / name)
    return tmp_path


def write_summary(folder, summary: dict) -> None:
    (folder / "summary.json").write_text(json.dumps(summary))


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


# --- the schema ------------------------------------------------------------------------------------------------


@pytest.mark.slow  # the micro main job (once per session)
def test_real_summary_matches_the_schema(micro_run):
    path = micro_run / "summary.json"
    s = RunSummary.load(path)
    assert s.schema_version == SCHEMA_VERSION
    assert s.models == ["base", "baseline", "rl"] and s.preset == "micro"
    assert s.verdict is not None and s.verdict.text  # a baseline was trained
    assert s.control is None  # the micro corpus has no `computed` positions
    assert set(s.accuracy) == set(s.models) and s.rl_summary.groups_drawn > 0
    assert s.steps.rl == s.config["rl"]["steps"] and s.flops.rl == pytest.approx(
        sum(s.flops.rl_breakdown.values())
    )
    # what is written is exactly what the model dumps (absent optional blocks stay absent, not null)
    assert json.loads(path.read_text()) == s.model_dump(mode="json")
    assert "control" not in json.loads(path.read_text())


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d["rl_summary"].pop("samples"), "rl_summary.samples"),
        (lambda d: d.pop("accuracy"), "accuracy"),
        (lambda d: d["flops"].pop("rl_breakdown"), "flops.rl_breakdown"),
        (lambda d: d["verdict"].pop("p_value"), "verdict.p_value"),
    ],
)
@pytest.mark.slow  # the micro main job (once per session)
def test_missing_key_is_rejected(real, tmp_path, edit, key):
    edit(real)
    write_summary(tmp_path, real)
    with pytest.raises(SummaryError, match="Field required") as err:
        RunSummary.load(tmp_path / "summary.json")
    assert key in str(err.value) and str(tmp_path / "summary.json") in str(err.value)


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d.update(bogus=1), "bogus"),
        (lambda d: d["rl_summary"].update(reward_mean=0.5), "rl_summary.reward_mean"),
        (lambda d: d["verdict"]["vs_base"].update(z=1.0), "verdict.vs_base.z"),
    ],
)
@pytest.mark.slow  # the micro main job (once per session)
def test_unknown_key_is_rejected(real, tmp_path, edit, key):
    edit(real)
    write_summary(tmp_path, real)
    with pytest.raises(SummaryError, match="Extra inputs are not permitted") as err:
        RunSummary.load(tmp_path / "summary.json")
    assert key in str(err.value) and str(tmp_path / "summary.json") in str(err.value)


@pytest.mark.slow  # the micro main job (once per session)
def test_bad_values_and_files_are_rejected(real, tmp_path):
    path = tmp_path / "summary.json"
    bad = copy.deepcopy(real)
    bad["accuracy"]["ghost"] = bad["accuracy"]["rl"]  # a model that is not in `models`
    write_summary(tmp_path, bad)
    with pytest.raises(SummaryError, match="ghost"):
        RunSummary.load(path)
    write_summary(tmp_path, real | {"schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(SummaryError, match="schema_version"):
        RunSummary.load(path)
    path.write_text('{"preset": "micro", ')  # cut mid-write
    with pytest.raises(SummaryError, match="not readable as JSON") as err:
        RunSummary.load(path)
    assert str(path) in str(err.value)
    with pytest.raises(SummaryError, match="not found"):
        RunSummary.load(tmp_path / "missing.json")
    with pytest.raises(SummaryError, match="rl_summary"):
        summary_table({k: v for k, v in real.items() if k != "rl_summary"})


@pytest.mark.slow  # the micro main job (once per session)
def test_write_and_load_round_trip(micro_run, tmp_path):
    s = RunSummary.load(micro_run / "summary.json")
    s.write(tmp_path / "summary.json")
    assert RunSummary.load(tmp_path / "summary.json") == s
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- the report from a real run --------------------------------------------------------------------------------


def test_read_metrics_skips_truncated_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(metrics_lines()))  # no newline after the cut line
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 30 + 30 + 11
    assert read_metrics(tmp_path / "missing.jsonl") == []


@pytest.mark.slow  # the micro main job (once per session)
def test_full_report(micro_run, run_dir):
    s = RunSummary.load(run_dir / "summary.json")
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    text = out.read_text(encoding="utf-8")
    # the run's own report, re-rendered from the same summary and metrics
    assert text == (micro_run / "report.html").read_text(encoding="utf-8")
    assert s.verdict is not None and escape(s.verdict.text) in text and "verdict none" not in text
    best = max(s.accuracy[m].with_thought["all"] for m in s.models)
    assert pct(s.accuracy["base"].standard["all"]) in text and f"<b>{pct(best)}</b>" in text
    assert text.count(IMG) >= 3
    assert "<script" not in text and "http" not in text  # no JavaScript, no external assets
    assert sci(s.flops.rl) in text and "<details>" in text and "group_size" in text
    assert s.rl_summary.reward in text and "information gain" in text and "Does thinking pay?" in text
    assert "not recorded" not in text
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # temp file moved into place


@pytest.mark.slow  # the micro main job (once per session)
def test_invalid_summary_still_renders(run_dir, real):
    del real["accuracy"]
    write_summary(run_dir, real)
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "accuracy: Field required" in text and "showing what the metrics have" in text
    assert NO_VERDICT in text and "not recorded (evaluation did not finish)" in text
    assert IMG in text  # the metrics' plots are still there


def test_no_summary_at_all(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(metrics_lines()[:20]))
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert "summary.json is missing" in text and IMG in text


@pytest.mark.slow  # the micro main job (once per session)
def test_html_escapes_summary_strings(run_dir, real):
    real["preset"] = "<script>alert(1)</script>"
    real["verdict"]["text"] = "RL <b>won</b> & more"
    write_summary(run_dir, real)
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "RL &lt;b&gt;won&lt;/b&gt; &amp; more" in text


def test_compute_table_names_where_the_lm_term_ran(run_dir, real):
    """A pass that did not run is left out of the compute table; a next-token term trained inside the loss
    passes (prefix sharing) is said to be there, not shown as a pass of zero FLOPs."""
    real["config"].setdefault("rl", {})["lm_coef"] = 1.0
    real["flops"]["rl_breakdown"]["lm"] = 0.0
    write_summary(run_dir, real)
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "rl: lm" not in text and "inside the loss passes" in text
    real["flops"]["rl_breakdown"]["lm"] = 1e9  # a pass of its own (no prefix sharing)
    write_summary(run_dir, real)
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "rl: lm" in text and "inside the loss passes" not in text


@pytest.mark.slow  # the micro main job (once per session)
def test_summary_table(real):
    s = RunSummary.from_dict(real)
    table = summary_table(s)
    assert summary_table(real) == table  # a dict is validated, then read the same way
    rows = table.splitlines()
    for model in ("base", "baseline", "rl"):
        assert any(r.split()[0] == model for r in rows)
    assert s.verdict is not None and s.verdict.text in table
    assert pct(s.accuracy["rl"].with_thought["all"]) in table and sci(s.flops.rl) in table
    assert f"{s.wall_seconds:.1f} s" in table
    assert len({len(r) for r in rows[:4]}) == 1  # header and model rows are fixed width


@pytest.mark.slow  # the micro main job (once per session)
def test_cli_report(run_dir, real):
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert summary_table(real) in result.output and "report:" in result.output
    real["rl_summary"]["reward_mean"] = 0.5
    write_summary(run_dir, real)
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 1
    assert "rl_summary.reward_mean" in result.output and str(run_dir / "summary.json") in result.output
    assert (run_dir / "report.html").is_file()


def test_series_resumed_run_last_line_wins():
    recs = [{"stage": "rl", "step": s, "loss": 1.0} for s in range(3)] + [
        {"stage": "rl", "step": 1, "loss": 2.0}
    ]
    assert plots.series(recs, "rl", "loss") == ([0, 1, 2], [1.0, 2.0, 1.0])


def test_plots_skip_missing_data():
    assert plots.reward_plot([]) is None
    assert plots.accuracy_plot(None) is None
    assert plots.all_plots(None, [{"stage": "pretrain", "step": 1}]) == []
    png = plots.reward_plot([{"stage": "rl", "step": s, "reward/mean": s / 30} for s in range(30)])
    assert png is not None and png.startswith(b"\x89PNG")


@pytest.mark.slow  # the micro main job (once per session)
def test_control_and_thinking_sections(run_dir, real):
    # The evaluation blocks of a run with `computed` positions, made by the evaluation's own functions from
    # known outcomes: RL's thought buys +20.8 points over the base model's (significant) but only +4.2 over the
    # baseline's standard prediction (under the 5-point margin), so the control fails.
    buckets = ["computed"] * 120 + ["hard"] * 40

    def right(computed: int, hard: int = 10) -> list[bool]:
        return [i < computed for i in range(120)] + [i < hard for i in range(40)]

    outcomes = {
        "base": {"standard": right(60), "with_thought": right(60)},
        "baseline": {"standard": right(80), "with_thought": right(70)},
        "rl": {"standard": right(60), "with_thought": right(85)},
    }
    lengths = {m: [9] * 120 + [1] * 40 for m in outcomes}
    gains = {m: [0.1] * 160 for m in outcomes}
    real |= summarize(outcomes, buckets, lengths, gains)
    real["verdict"] = verdict(outcomes, buckets)
    real["control"] = control_check(outcomes, buckets)
    write_summary(run_dir, real)
    s = RunSummary.load(run_dir / "summary.json")
    c = s.control
    assert c is not None and c.vs_base is not None and c.vs_baseline is not None
    assert c.vs_base.passed and not c.vs_baseline.passed and not c.passed
    html = write_report(run_dir).read_text()
    assert "Positive control FAILED" in html and pct(c.rl_with_thought) in html and "+20.8 pts" in html
    assert "Does thinking pay?" in html and "9.0 tok · +20.8 pts ▲" in html and "1.0 tok · +0.0 pts" in html
    table = summary_table(s)
    assert (
        "th/computed" in table
        and "Positive control FAILED" in table
        and f"vs baseline +4.2 pts (p = {c.vs_baseline.p_value:.2g})" in table
    )


def test_skipped_thinking_and_an_underpowered_evaluation_are_said_plainly(run_dir, real):
    # 48 positions (the size that once hid a 20-point blind spot), and two models whose thoughts are empty
    buckets = ["hard"] * 48
    outcomes = {
        m: {"standard": [i < 10 for i in range(48)], "with_thought": [i < 12 for i in range(48)]}
        for m in ("base", "baseline", "rl")
    }
    lengths = {"base": [5] * 48, "baseline": [1] * 48, "rl": [1] * 47 + [3]}
    real |= summarize(outcomes, buckets, lengths, {})
    real["verdict"] = verdict(outcomes, buckets)
    write_summary(run_dir, real)
    s = RunSummary.load(run_dir / "summary.json")
    assert s.empty_thoughts == {"base": 0.0, "baseline": 1.0, "rl": pytest.approx(47 / 48)}
    table = summary_table(s)
    assert "baseline: thinking skipped: mean thought 1.0 token, 100% of its evaluated thoughts empty" in table
    assert "rl: thinking skipped: mean thought 1.0 tokens" in table and "base: thinking skipped" not in table
    assert "Power: underpowered: 48 positions can only detect differences of" in s.verdict.text
    assert s.verdict.detectable is not None and s.verdict.detectable > 0.05
    html = write_report(run_dir).read_text()
    assert "baseline: thinking skipped" in html and "underpowered: 48 positions" in html and "(sees ≥" in html


def test_mixture_domains_table_and_plot(tmp_path):
    """A mixture's metrics give a Domains section: early and late quarter means per domain, the shares at the
    last step, and a per-domain plot; a single-domain run has neither."""
    rows = []
    for step in range(1, 9):
        rows.append(
            {
                "stage": "rl",
                "step": step,
                "domain/math/reward": step / 10,
                "domain/math/accuracy": 0.25 if step <= 2 else 0.75,
                "domain/math/signal_fraction": 0.5,
                "domain/math/groups": 2,
                "domain/text/reward": 0.1,
                "domain/text/groups": 3,
                "positions/math/share": 0.4,
                "positions/next_token/share": 0.6,
            }
        )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = write_report(tmp_path).read_text()
    assert "<h2>Domains</h2>" in html and "Per domain (mixture)" in html
    # math: reward first quarter (steps 1-2) 0.15, last quarter (7-8) 0.75; accuracy 0.25 → 0.75; 16 groups
    math_row = html.split("<td>math</td>")[1].split("</tr>")[0]
    assert [c.removeprefix("<td>") for c in math_row.split("</td>")[:7]] == [
        "0.15", "0.75", "0.25", "0.75", "0.5", "0.5", "16"
    ]  # fmt: skip
    text_row = html.split("<td>text</td>")[1].split("</tr>")[0]
    assert "–" in text_row and "<td>24</td>" in text_row  # no accuracy logged: shown as missing, not 0
    assert "math 40%, next_token 60%" in html
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"stage": "rl", "step": 1, "reward/mean": 0.1}) + "\n")
    html = write_report(tmp_path).read_text()
    assert "<h2>Domains</h2>" not in html and "Per domain" not in html


@pytest.mark.slow  # the micro main job (once per session)
def test_any_task_source_fits_the_summary(real):
    """A run whose tasks come from a mixture, or from a problem file, writes its source's counts into the
    summary (`selection.rl_task_source`); before, the unknown keys failed the run at its very end."""
    from nextrl.env import MixtureTaskSource
    from nextrl.pipeline import _pool

    class Source:
        def __init__(self, counts):
            self.counts = counts

        def stats(self):
            return self.counts

    mix = MixtureTaskSource({"next_token": Source({"active": 10, "visits": 3}), "math": Source({"problems": 7})},
                            {"next_token": 1, "math": 1})  # fmt: skip
    for counts in (mix.stats(), {"problems": 7, "given": 12}, {"active": 5, "visits": 9}):
        summary = copy.deepcopy(real)
        summary["selection"].update(_pool({"positions": counts}))
        parsed = RunSummary.model_validate(summary)
        if "active" in counts:
            assert parsed.selection.rl_positions_active == 5 and parsed.selection.rl_task_source is None
        else:
            assert parsed.selection.rl_task_source == counts
