"""Task sources (the mixture, the position source's feedback), the config's moved keys, and the CLI's split
between expected failures (one message) and bugs (a traceback)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from nextrl.cli import app
from nextrl.config import ConfigError, load_config
from nextrl.env import Adaptation, MixtureTaskSource, Task
from nextrl.errors import DataError


class Counter:
    """A source that numbers its tasks and records its feedback."""

    def __init__(self, name: str, unit: int = 1):
        self.name, self.unit, self.cursor, self.visited = name, unit, 0, []

    def take(self, n: int, step: int) -> list[Task]:
        n = -(-n // self.unit) * self.unit  # rounds up to whole units, as the position source does
        out = [Task(f"{self.name}{k}", [1], domain=self.name) for k in range(self.cursor, self.cursor + n)]
        self.cursor += n
        return out

    def visit(self, task, rewards, signal, uncertainty):
        self.visited.append(task.task_id)

    def stats(self):
        return {"cursor": self.cursor}

    def state_dict(self):
        return {"cursor": self.cursor}

    def load_state_dict(self, state):
        self.cursor = state["cursor"]


def test_mixture_follows_the_weights_and_routes_feedback():
    mix = MixtureTaskSource({"web": Counter("web"), "math": Counter("math")}, {"web": 3, "math": 1})
    tasks = [t for step in range(10) for t in mix.take(8, step)]
    counts = {d: sum(t.domain == d for t in tasks) for d in ("web", "math")}
    assert counts == {"web": 60, "math": 20}  # 3:1 of 80, exactly over whole steps
    first = mix.take(1, 10)  # a single task goes to the source furthest behind its quota
    assert len(first) == 1
    for t in tasks[:5]:
        mix.visit(t, [0.0, 1.0], True, None)
    assert mix.sources["web"].visited + mix.sources["math"].visited == [t.task_id for t in tasks[:5]]
    assert mix.stats()["web"]["given"] + mix.stats()["math"]["given"] == 81


def test_mixture_charges_a_source_what_it_gave_and_resumes():
    mix = MixtureTaskSource({"a": Counter("a", unit=4), "b": Counter("b")}, {"a": 1, "b": 1})
    given = [len(mix.take(4, s)) for s in range(6)]
    assert sum(given) >= 24 and abs(mix.given["a"] - mix.given["b"]) <= 4  # rounding up is charged: no drift
    for s in range(6, 40):
        mix.take(3, s)
    assert abs(mix.given["a"] - mix.given["b"]) <= 4
    state = mix.state_dict()
    again = MixtureTaskSource({"a": Counter("a", unit=4), "b": Counter("b")}, {"a": 1, "b": 1})
    again.load_state_dict(state)
    assert [t.task_id for t in again.take(4, 6)] == [t.task_id for t in mix.take(4, 6)]


def reference_shares(weights, signal, a: Adaptation) -> dict[str, float]:
    """The adapted shares written out: w·(floor+ŝ)^strength normalised, the starved lifted to min_share."""
    raw = {k: weights[k] * (a.floor + signal[k]) ** a.strength for k in weights}
    shares = {k: v / sum(raw.values()) for k, v in raw.items()}
    low = [k for k in shares if weights[k] > 0 and shares[k] < a.min_share]
    rest = sum(v for k, v in shares.items() if k not in low)
    return {
        k: a.min_share if k in low else v * (1 - a.min_share * len(low)) / rest for k, v in shares.items()
    }


def run_adaptive(adapt: Adaptation | None, steps: int = 30, per_step: int = 20):
    """Source 'rich' always has signal, 'poor' never; returns the mixture and the tasks each step gave."""
    mix = MixtureTaskSource({"rich": Counter("rich"), "poor": Counter("poor")}, {"rich": 1, "poor": 1}, adapt)
    per = []
    for step in range(steps):
        tasks = mix.take(per_step, step)
        per.append(tasks)
        for t in tasks:
            mix.visit(t, [0.0, 1.0] if t.domain == "rich" else [0.5, 0.5], t.domain == "rich", None)
    return mix, per


def test_adaptive_mixture_moves_toward_signal_and_keeps_the_floor():
    a = Adaptation(strength=2.0, rate=0.3, floor=0.05, min_share=0.1)
    mix, per = run_adaptive(a)
    # ŝ follows its moving average exactly: rich stays at 1, poor decays by (1 - rate) per step it was drawn
    assert mix.signal["rich"] == 1.0
    assert mix.signal["poor"] == pytest.approx(0.7 ** sum(1 for tasks in per[:-1] if tasks))
    assert mix.shares == pytest.approx(reference_shares(mix.weights, mix.signal, a))
    # first step at the configured 1:1, the last near the floor of the silent source
    first = sum(t.domain == "poor" for t in per[0]) / 20
    last = sum(t.domain == "poor" for t in per[-1]) / 20
    assert first == 0.5 and last == pytest.approx(0.1, abs=0.05)
    assert mix.stats()["poor"]["share"] == pytest.approx(0.1)
    # fixed weights do not move
    fixed, per_fixed = run_adaptive(None)
    assert all(sum(t.domain == "poor" for t in tasks) == 10 for tasks in per_fixed)
    assert fixed.shares == {"rich": 0.5, "poor": 0.5}


def test_adaptive_mixture_resumes_exactly():
    a = Adaptation(strength=1.0, rate=0.2)
    mix, _ = run_adaptive(a, steps=7)
    again = MixtureTaskSource({"rich": Counter("rich"), "poor": Counter("poor")}, {"rich": 1, "poor": 1}, a)
    again.load_state_dict(mix.state_dict())
    assert again.shares == mix.shares
    assert [t.task_id for t in again.take(20, 7)] == [t.task_id for t in mix.take(20, 7)]


def test_adaptive_mixture_config_needs_a_mixture():
    with pytest.raises(ConfigError, match="mixture_adapt has no effect"):
        load_config("micro", ["env.mixture_adapt={strength: 1}"])
    cfg = load_config("micro", ["env.mixture={next_token: 1, math: 1}", "env.mixture_adapt={min_share: 0.2}"])
    assert cfg.env.mixture_adapt.min_share == 0.2 and cfg.env.mixture_adapt.strength == 1.0


def test_mixture_rejects_bad_weights():
    with pytest.raises(ValueError, match="exactly the sources"):
        MixtureTaskSource({"a": Counter("a")}, {"b": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        MixtureTaskSource({"a": Counter("a")}, {"a": 0.0})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("env.missing_answer_reward=-1", "was removed.*format"),
        ("rl.share_prefix=false", "moved to sharing.enabled"),
        ("sampling.max_tree_nodes=128", "moved to sharing.max_tree_nodes"),
    ],
)
def test_moved_and_removed_keys_say_where(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("micro", [override])


def test_cli_prints_expected_failures_and_keeps_bugs_visible(monkeypatch, tmp_path):
    import nextrl.pipeline

    def fail(exc):
        def run(*args, **kwargs):
            raise exc

        return run

    runner = CliRunner()
    args = ["run", "--preset", "micro", "--out", str(tmp_path / "r")]
    monkeypatch.setattr(nextrl.pipeline, "run", fail(DataError("data.sources[0].path: 'x' matches no files")))
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "error: data.sources[0].path" in result.output
    monkeypatch.setattr(nextrl.pipeline, "run", fail(ConfigError("config key 'env.name': unknown")))
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "error: config key 'env.name'" in result.output
    # an internal ValueError is a bug: it is not turned into a one-line "error:" message
    monkeypatch.setattr(nextrl.pipeline, "run", fail(ValueError("shapes do not match")))
    result = runner.invoke(app, args)
    assert isinstance(result.exception, ValueError) and "error:" not in result.output
