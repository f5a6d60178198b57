"""Names a reader can read: methods, architectures as hidden widths, budgets as iterations.

Tables and figures never show ``arch_index`` or ``budget_index`` alone: an architecture position
is named by the hidden widths each method used there (``1500-750-75`` for GPLaSDI,
``1000-500-50`` for mLaSDI), a budget position by its stage iterations (``25k`` and ``25k+50k``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

__all__ = [
    "BASELINE",
    "METHOD_LABELS",
    "iters_label",
    "budget_label",
    "position_labels",
]

BASELINE = "gplasdi"  # every other method is compared with this one
METHOD_LABELS = {"gplasdi": "GPLaSDI", "mlasdi": "mLaSDI", "mlasdi_val": "mLaSDI-val"}


def iters_label(n: int) -> str:
    """Iterations in thousands when at least 1000: ``25000 -> "25k"``, ``1500 -> "1.5k"``,
    ``40 -> "40"``."""
    n = int(n)
    if abs(n) < 1000:
        return str(n)
    return f"{n / 1000:g}k"


def budget_label(stage_iters: Sequence[int]) -> str:
    """A budget as its stage iterations joined by ``+``: ``[25000, 50000] -> "25k+50k"``."""
    return "+".join(iters_label(n) for n in stage_iters)


def _joined(values: pd.Series) -> str:
    """The distinct labels of one position, ``/``-joined (one in a well-formed study)."""
    return "/".join(sorted(set(values.dropna().astype(str)))) or "–"


def position_labels(rows: pd.DataFrame, key: str, methods: Sequence[str]) -> pd.DataFrame:
    """One row per value of ``key`` (``arch_index`` or ``budget_index``) with a label per method.

    Columns: ``key``, then one column per method holding its hidden widths (for ``arch_index``)
    or its budget (for ``budget_index``) at that position, ``–`` where the method has no row.
    """
    if key == "arch_index":
        text = rows["hidden"].astype("string")
    elif key == "budget_index":
        text = rows["stage_iters"].map(lambda s: None if s is None else budget_label(s))
    else:
        raise ValueError(f"key must be 'arch_index' or 'budget_index', got {key!r}")
    t = pd.DataFrame({key: rows[key], "method": rows["method"], "text": text})
    out = pd.DataFrame({key: sorted(t[key].unique())})
    for m in methods:
        sub = t[t["method"] == m].groupby(key)["text"].agg(_joined)
        out[m] = [sub.get(k, "–") for k in out[key]]
    return out
