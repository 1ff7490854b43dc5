import os
from pathlib import Path

import pytest

os.environ.setdefault("NEXTRL_QUIET", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Base models pretrained by tests go to a per-session cache, never the user's ~/.cache/nextrl. Session
    # scoped, so that module and session fixtures (which run before function fixtures) see it too.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEXTRL_CACHE", str(tmp_path_factory.getbasetemp() / "nextrl-cache"))
        yield


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory, _isolated_cache) -> Path:
    """The micro main job, run once per session (fp32: the same figures on every CPU); its run folder."""
    from nextrl.config import load_config
    from nextrl.pipeline import run

    out = tmp_path_factory.mktemp("micro_run")
    run(load_config("micro", ["model.dtype=float32"]), out)
    return out
