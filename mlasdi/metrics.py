"""Relative errors and the schema of study results.

The error of a prediction for parameter mu (DESIGN.md) is

    r(mu) = max_t ||u(t; mu) - u~(t; mu)||_2 / ||u(t; mu)||_2

over the whole state at each snapshot time. The functions accept numpy arrays or torch tensors of
shape [..., n_t, n_state] and return the same kind.

``RESULT_COLUMNS`` and ``PARAM_ERROR_COLUMNS`` are the single definition of the Parquet result
tables: the study harness writes them and the analysis validates them, without either importing
the other. Kinds are ``string``, ``int64``, ``float64``, ``bool``, ``list<bool>``,
``list<int64>``, ``list<float64>``, ``list<string>``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def relative_error_over_time(truth: Any, prediction: Any) -> Any:
    """[..., n_t, n_state] -> [..., n_t]: ||u - u~||_2 / ||u||_2 at each snapshot time."""
    diff = prediction - truth
    return ((diff * diff).sum(-1) ** 0.5) / ((truth * truth).sum(-1) ** 0.5)


def max_relative_error(truth: Any, prediction: Any) -> Any:
    """[..., n_t, n_state] -> [...]: r(mu), the max over time of the relative error."""
    per_time = relative_error_over_time(truth, prediction)
    return per_time.max(-1) if isinstance(per_time, np.ndarray) else per_time.amax(-1)


def summarize_errors(errors: np.ndarray, *, prefix: str = "err") -> dict[str, float]:
    """max / mean / median / min of r(mu) over a set of parameters (NaN when the set is empty)."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        return {f"{prefix}_{k}": float("nan") for k in ("max", "mean", "median", "min")}
    return {
        f"{prefix}_max": float(errors.max()),
        f"{prefix}_mean": float(errors.mean()),
        f"{prefix}_median": float(np.median(errors)),
        f"{prefix}_min": float(errors.min()),
    }


METHODS = ("gplasdi", "mlasdi", "mlasdi_val")
STATUSES = ("ok", "diverged", "failed")

# One row per evaluated model (a trial evaluated at one budget).
RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("study", "string"),
    ("trial_id", "string"),
    ("evaluation_id", "string"),  # unique per row: "<trial_id>/b<budget_index>"
    ("method", "string"),  # gplasdi | mlasdi | mlasdi_val
    ("hidden", "string"),  # stage-1 hidden widths, e.g. "1000-500-50"
    ("arch_index", "int64"),  # position of the architecture in the spec (Table 1 row)
    ("n_model_params", "int64"),  # parameters of every network used at prediction
    ("latent_dim", "int64"),
    ("n_stages", "int64"),
    ("stage_iters", "list<int64>"),
    ("budget_index", "int64"),  # position of the budget in the spec
    ("total_iters", "int64"),
    ("seed", "int64"),
    ("err_max", "float64"),  # r(mu) over every test parameter
    ("err_mean", "float64"),
    ("err_median", "float64"),
    ("err_min", "float64"),
    ("unseen_err_max", "float64"),  # the same over test parameters that are not training points
    ("unseen_err_mean", "float64"),
    ("unseen_err_median", "float64"),
    ("unseen_err_min", "float64"),
    ("train_err_max", "float64"),
    ("train_time_s", "float64"),  # all stages
    ("stage_times_s", "list<float64>"),
    ("eval_time_s", "float64"),
    ("device", "string"),
    ("status", "string"),  # ok | diverged | failed
    ("message", "string"),
    ("config_json", "string"),
    ("mlasdi_version", "string"),
    ("created_at", "string"),  # ISO 8601, UTC
    # Provenance (mlasdi.runtime.provenance); absent from files written before it, read as null.
    ("torch_threads", "int64"),  # float32 results depend on the thread count
    ("torch_version", "string"),
    ("numpy_version", "string"),
    ("git_commit", "string"),  # of the checkout that ran; null outside a git checkout
    # mlasdi_val (mlasdi.acceptance), one entry per residual stage (stage 2, 3, ...); empty lists
    # for the other methods. Held-out = training parameters the residual stages did not train on.
    ("stage_accepted", "list<bool>"),  # whether the stage was kept
    ("stage_stop_iters", "list<int64>"),  # its stopping iteration (best held-out checkpoint)
    ("stage_heldout_err_max", "list<float64>"),  # held-out max error with it at that iteration
    # Held-out max error of the model kept after stage 1, 2, ... (n_stages entries; empty lists
    # for the other methods): never increasing.
    ("heldout_err_max", "list<float64>"),
    # The data source: its problem (``vlasov``, ``file``, ...) and parameter names, in the order
    # of ``params`` in PARAM_ERROR_COLUMNS; null in files written before them.
    ("problem", "string"),
    ("param_names", "list<string>"),
    # The spread of GP samples of the prediction (mlasdi.uncertainty), residual stages decoding
    # the same sampled latent trajectories; over every test parameter and (t, x). Null in files
    # written before them, and (but uq_samples, 0) when a study switches them off.
    ("uq_samples", "int64"),  # GP samples drawn per parameter ([run] uncertainty_samples)
    ("coverage_90", "float64"),  # fraction of true values inside prediction +- z_0.9 std
    ("coverage_levels", "list<float64>"),  # nominal levels of the calibration curve
    ("coverage_curve", "list<float64>"),  # the empirical coverage at each of them
    ("spread_spearman", "float64"),  # rank correlation of max std and r(mu) over test points
    ("calibration_scale", "float64"),  # spread scale covering 90 % of held-out training values
    ("calibrated_coverage_90", "float64"),  # test coverage of the 90 % interval so scaled
    ("uq_time_s", "float64"),  # seconds spent on the above (not in eval_time_s)
    # Where the training points came from ([sampling], mlasdi.sampling). Null in files written
    # before them (their training sets were fixed).
    ("sampling", "string"),  # fixed | greedy
    ("n_fom_solves", "int64"),  # training points of the model (one full-order solve each)
    ("picked_params", "list<float64>"),  # greedy picks in order, flat [n_picks * n_p]
    ("picked_iters", "list<int64>"),  # the stage-1 iteration after which each was picked
    ("round_time_s", "float64"),  # greedy rounds up to this model: scoring, solves, growing
    ("fom_time_s", "float64"),  # the full-order solves (or cache reads) of those rounds
)

# One row per (evaluated model, test parameter): r(mu) for heatmaps.
PARAM_ERROR_COLUMNS: tuple[tuple[str, str], ...] = (
    ("study", "string"),
    ("evaluation_id", "string"),
    ("method", "string"),
    ("param_index", "int64"),
    ("params", "list<float64>"),
    ("is_train", "bool"),  # a training point of the model evaluated (its grown set if greedy)
    ("err", "float64"),
    ("max_std", "float64"),  # largest std over (t, x) of its GP samples; null if not computed
)
