"""nextrl: reinforcement learning on next-token prediction.

At a chosen position of a document the policy writes a short thought, then predicts what comes next; the
reward says whether the thought helped predict the text that really follows.
"""

__version__ = "0.1.0"

# Our own stages show progress bars; the ones transformers draws for saving/loading a small model are noise.
try:  # pragma: no cover - depends on the installed transformers
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except Exception:  # noqa: BLE001
    pass
