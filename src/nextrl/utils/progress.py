"""Progress bars for long stages (tqdm on stderr; quiet when NEXTRL_QUIET=1, e.g. in tests)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress(total: int | None = None, desc: str = "", unit: str = "it", **kw) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        mininterval=0.5,
        leave=True,
        disable=os.environ.get("NEXTRL_QUIET") == "1",
        **kw,
    )
