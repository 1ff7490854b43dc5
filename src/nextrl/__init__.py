"""nextrl: reinforcement learning on next-token prediction.

At a chosen position of a document the policy writes a short thought, then predicts what comes next; the
reward says whether the thought helped predict the text that really follows.
"""

__version__ = "0.1.0"
