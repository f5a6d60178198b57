"""Analysis of study results: improvement factors over GPLaSDI with verdicts, report and figures.

Reads ``RESULTS_DIR/results/*.parquet`` (and ``param_errors/``) without Ray or ``studies``.
Importing this package does not import matplotlib; only drawing does.

>>> from analysis import analyze, write_report
>>> write_report(analyze("runs/vlasov_quick"), "runs/vlasov_quick/report")  # doctest: +SKIP
"""

from .factors import (
    compared_methods,
    factor_table,
    factors_by,
    pair_models,
    share_below,
    split_usable,
    verdict,
)
from .report import analyze, write_report
from .schema import SchemaError, arrow_schema, read_param_errors, read_results

__all__ = [
    "SchemaError",
    "analyze",
    "arrow_schema",
    "compared_methods",
    "factor_table",
    "factors_by",
    "pair_models",
    "read_param_errors",
    "read_results",
    "share_below",
    "split_usable",
    "verdict",
    "write_report",
]
