"""Task sources (the mixture, the position source's feedback), the config's moved keys, and the CLI's split
between expected failures (one message) and bugs (a traceback)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from nextrl.cli import app
from nextrl.config import ConfigError, load_config
from nextrl.env import MixtureTaskSource, Task
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
