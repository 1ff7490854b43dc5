"""Report stage: an HTML report and a terminal table from a run folder's summary.json and metrics.jsonl."""

from nextrl.report.html import write_report
from nextrl.report.plots import read_metrics
from nextrl.report.table import summary_table

__all__ = ["read_metrics", "summary_table", "write_report"]
