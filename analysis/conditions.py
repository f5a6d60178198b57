"""What the factors were measured under: how concurrent the trials were, training-limited models.

Computed from the result rows only; every function returns data (the report words it).

Trial intervals
---------------
A row's ``created_at`` is stamped after its model was evaluated; ``train_time_s`` is the training
wall time of that model summed over its stages, each with building the model at its end (the GP
fits; a later budget of a trial continues the earlier one's trainer, so it counts the shared
training too) and ``eval_time_s`` its evaluation. A row
therefore spans about ``[created_at - train_time_s - eval_time_s, created_at]``, and a *trial*
(one ``trial_id``: its budgets are trained one after another in one process) spans from the
earliest start to the latest ``created_at`` of its rows. The start is approximate: it misses data
set-up and, for a later budget, the evaluations of earlier budgets (the trial's first row bounds
it); in a resumed study it lies too early, since a restored trainer keeps its earlier run's time.
Rows without a finite ``train_time_s`` (failed models) are left out.

*Mean concurrency* is the time-average number of trials running, over the time at least one
runs: the sum of trial lengths divided by the length of their union. One trial at a time gives
exactly 1; two trials always side by side give 2.

Training-limited
----------------
A model is *training-limited* when its error at the training parameters, where the fit is
checked directly, is as large as its error at the unseen test parameters: the autoencoder and
latent dynamics do not fit even the training data, so more iterations, not the interpolation
between training points, would lower the error. "As large" is defined as
``train_err_max / unseen_err_max > TRAINING_LIMITED_RATIO`` (0.5) for the median model of a
method. Otherwise the model is *interpolation-limited*: it fits its training parameters well
below its unseen error, so where the training points lie (e.g. greedy against fixed sampling)
can matter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mlasdi.metrics import METHODS

from .factors import with_sampling

__all__ = [
    "TRAINING_LIMITED_RATIO",
    "trial_intervals",
    "concurrency",
    "training_limited",
]

TRAINING_LIMITED_RATIO = 0.5


def trial_intervals(results: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: ``trial_id``, ``method``, ``n_rows``, ``start``, ``end`` (UTC
    timestamps) and ``seconds`` (see the module doc for what the interval covers)."""
    end = pd.to_datetime(results["created_at"], utc=True, errors="coerce", format="ISO8601")
    train = results["train_time_s"].astype("float64")
    busy = train + results["eval_time_s"].astype("float64").fillna(0.0)
    ok = end.notna() & np.isfinite(train)
    rows = pd.DataFrame(
        {
            "trial_id": results["trial_id"].astype(str),
            "method": results["method"],
            "start": end - pd.to_timedelta(busy, unit="s"),
            "end": end,
        }
    )[ok.to_numpy()]
    out = rows.groupby("trial_id", sort=True).agg(
        method=("method", "first"),
        n_rows=("end", "size"),
        start=("start", "min"),
        end=("end", "max"),
    )
    out["seconds"] = (out["end"] - out["start"]).dt.total_seconds()
    return out.reset_index()


def concurrency(intervals: pd.DataFrame) -> dict[str, float]:
    """Overlap of trial intervals (``start``, ``end`` columns: timestamps or seconds).

    Returns ``n_trials``, ``mean_concurrent`` (sum of lengths / length of the union, NaN without
    a positive union), ``max_concurrent`` (most trials running at one instant; intervals that
    only touch do not overlap), ``busy_s`` (the union's length) and ``wall_s`` (first start to
    last end).
    """
    start, end = intervals["start"], intervals["end"]
    if len(intervals) and pd.api.types.is_datetime64_any_dtype(start):
        t0 = start.min()
        start, end = (start - t0).dt.total_seconds(), (end - t0).dt.total_seconds()
    s = np.asarray(start, dtype=np.float64)
    e = np.asarray(end, dtype=np.float64)
    if s.size == 0:
        return {
            "n_trials": 0,
            "mean_concurrent": np.nan,
            "max_concurrent": 0,
            "busy_s": 0.0,
            "wall_s": 0.0,
        }
    # Sweep: ends sort before starts at the same instant, so touching intervals do not overlap.
    times = np.concatenate([e, s])
    steps = np.concatenate([-np.ones(e.size), np.ones(s.size)])
    order = np.lexsort((steps, times))
    times, running = times[order], np.cumsum(steps[order])
    union = float(np.sum(np.diff(times)[running[:-1] > 0]))
    return {
        "n_trials": int(s.size),
        "mean_concurrent": float(np.sum(e - s) / union) if union > 0 else np.nan,
        "max_concurrent": int(running.max()),
        "busy_s": union,
        "wall_s": float(e.max() - s.min()),
    }


def training_limited(
    usable: pd.DataFrame,
    *,
    ratio: float = TRAINING_LIMITED_RATIO,
    by: Sequence[str] = ("method",),
) -> pd.DataFrame:
    """Per method (or per ``by`` group, e.g. ``("method", "sampling")``, methods in
    ``METHODS`` order): ``n_models`` with finite, positive ``train_err_max`` and
    ``unseen_err_max``, ``median_train_over_unseen`` (median of their ratio) and
    ``training_limited`` (that median > ``ratio``; ``<NA>`` without models). A group is
    *interpolation-limited* when it is not training-limited."""
    by = list(by)
    rank = {m: i for i, m in enumerate(METHODS)}
    usable = with_sampling(usable)
    groups = sorted(
        usable.groupby(by, sort=True),
        key=lambda g: [
            rank.get(v, len(rank)) if k == "method" else 0 for k, v in zip(by, g[0], strict=True)
        ],
    )
    rows = []
    for values, u in groups:
        train = u["train_err_max"].to_numpy(dtype=np.float64)
        unseen = u["unseen_err_max"].to_numpy(dtype=np.float64)
        good = np.isfinite(train) & np.isfinite(unseen) & (train > 0) & (unseen > 0)
        r = train[good] / unseen[good]
        med = float(np.median(r)) if r.size else np.nan
        rows.append(
            {
                **dict(zip(by, values, strict=True)),
                "n_models": int(r.size),
                "median_train_over_unseen": med,
                "training_limited": pd.NA if not r.size else bool(med > ratio),
            }
        )
    columns = [*by, "n_models", "median_train_over_unseen", "training_limited"]
    return pd.DataFrame(rows, columns=columns)
