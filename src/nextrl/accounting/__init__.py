"""Accounting: the work each pass really did (`TokenWork`), its model FLOPs (`FlopModel`) and the machine's
measured matmul peak (MFU's denominator). Below every stage, so that each one can report what it spent."""

from nextrl.accounting.flops import FlopModel, TokenWork

__all__ = ["FlopModel", "TokenWork"]
