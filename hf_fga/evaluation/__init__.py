"""
Faithfulness evaluation at scale (method.md §5–7): configuration grids, a resumable sharded runner writing parquet,
statistics against TransMM, and the Markdown/CSV report with its figures. Entry point:
`scripts/evaluate_faithfulness.py` (plain `python` or `accelerate launch`).
"""

from .attribution_grid import GridAttributions, attribute_configurations
from .configuration import EvaluationConfiguration, expand_grid, parse_layer_sets
from .report import write_report
from .runner import RunSummary, run_evaluation
from .statistics import summarize
from .storage import completed_keys, read_parts, write_part

__all__ = [
    "EvaluationConfiguration",
    "GridAttributions",
    "RunSummary",
    "attribute_configurations",
    "completed_keys",
    "expand_grid",
    "parse_layer_sets",
    "read_parts",
    "run_evaluation",
    "summarize",
    "write_part",
    "write_report",
]
