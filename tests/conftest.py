import os

import pytest

os.environ.setdefault("NEXTRL_QUIET", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Base models pretrained by tests go to a per-session cache, never the user's ~/.cache/nextrl.
    monkeypatch.setenv("NEXTRL_CACHE", str(tmp_path_factory.getbasetemp() / "nextrl-cache"))
