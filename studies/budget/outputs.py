"""What a search leaves in ``--out``: trials.csv, the figures, best_config.json, best_spec.toml."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from studies.budget.space import Candidate, SearchSetup, candidate_of, rom_config
from studies.spec import StudySpec, spec_from_dict

# The search parameters each number of stages uses (the others are sampled but ignored).
USED_PARAMS = {
    1: ("n_stages",),
    2: ("n_stages", "stage1_share", "kappa", "residual_width_mult"),
    3: ("n_stages", "stage1_share", "stage2_share", "kappa", "residual_width_mult"),
}
# Fewer completed distinct models than this and the importance ranking is only a sketch.
MIN_IMPORTANCE_TRIALS = 10
# A best validation err_max at or above this means no trial fitted the held-out parameters.
LEARNED_NOTHING_ERR = 0.5


def used_params(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a trial that its number of stages uses."""
    keep = USED_PARAMS.get(int(params.get("n_stages", 0)), tuple(params))
    return {k: v for k, v in params.items() if k in keep}


def _model_key(setup: SearchSetup | None, params: dict[str, Any]) -> tuple | None:
    if setup is None or not set(params) >= set(USED_PARAMS[3]):
        return None
    return candidate_of(setup, params).key


def trials_table(study: Any, setup: SearchSetup | None = None) -> Any:
    """One row per trial: ``number, state, value_0[, value_1], duration_s, params_*`` and the
    trial's stage iterations, validation error, training time and status (``trials.csv``).

    A trial shows only the parameters its number of stages uses (a one-stage trial has no
    kappa or residual widths). ``same_as`` is the first trial that trains the same model (with
    ``setup``: the same stage iterations, and kappa and residual widths when it has residual
    stages), whether or not this one was trained again; empty when there is none, as
    ``retry_of`` for a trial that is not a re-run of one a killed driver left."""
    import pandas as pd

    multi = len(study.directions) > 1
    pareto = {t.number for t in study.best_trials} if multi else set()
    first_of: dict[tuple, int] = {}
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        values = t.values or []
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "value_0": values[0] if values else math.nan,
        }
        if multi:
            row["value_1"] = values[1] if len(values) > 1 else math.nan
            row["pareto"] = t.number in pareto
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else math.nan
        used = used_params(t.params)
        for k in sorted(t.params):
            row[f"params_{k}"] = used.get(k, None)
        ua = t.user_attrs
        row["stage_iters"] = "-".join(str(i) for i in ua.get("stage_iters", []))
        multi_stage = len(ua.get("stage_iters", [])) > 1
        row["residual_hidden"] = (
            "-".join(str(i) for i in ua.get("residual_hidden", [])) if multi_stage else ""
        )
        row["last_step"] = t.last_step if t.last_step is not None else -1
        row["last_intermediate"] = (
            t.intermediate_values[t.last_step] if t.last_step is not None else math.nan
        )
        row["train_time_s"] = ua.get("train_time_s", math.nan)
        row["status"] = ua.get("status", "")
        row["message"] = ua.get("message", "")
        row["retry_of"] = ua.get("retry_of")
        key = _model_key(setup, t.params)
        same = ua.get("same_as") if key is None else first_of.setdefault(key, t.number)
        row["same_as"] = None if same == t.number else same
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in ("retry_of", "same_as"):
        if col in table:
            table[col] = table[col].astype("Int64")
    return table


def best_trial(study: Any) -> Any:
    """The completed trial with the lowest finite validation err_max (the Pareto point with the
    lowest error when multi-objective); None when there is none."""
    from optuna.trial import TrialState

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and math.isfinite(t.values[0])
    ]
    if not done:
        return None
    return min(done, key=lambda t: (t.values[0], t.number))


def best_spec(spec: StudySpec, setup: SearchSetup, cand: Candidate) -> StudySpec:
    """A spec ``mlasdi-study run`` executes: the best candidate trained on the full training set
    (GPLaSDI for one stage, mLaSDI with the found residual widths and kappa for two or more)."""
    d = spec.to_dict()
    for m in ("gplasdi", "mlasdi"):
        d.pop(m, None)
    d["name"] = f"{spec.name}-budget-best"
    d["seeds"] = [setup.seed]
    arch = {"hidden": [list(setup.hidden)], "latent_dims": [setup.latent_dim]}
    if cand.n_stages == 1:
        d["gplasdi"] = {**arch, "budgets": [cand.stage_iters[0]]}
    else:
        m = spec.method("mlasdi") if any(x.name == "mlasdi" for x in spec.methods) else None
        d["mlasdi"] = {
            **arch,
            "budgets": [list(cand.stage_iters)],
            "residual_hidden": list(cand.residual_hidden),
            "residual_kappa": float(cand.kappa),
            "residual_activation": m.residual_activation if m else "tanh",
            "residual_lr": m.residual_lr if m else 1e-3,
        }
    return spec_from_dict(d, source="")


def importances(study: Any) -> dict[str, float]:
    """fANOVA importances of the search parameters for validation err_max (finite, completed
    trials only); empty when fewer than 3 such trials."""
    import optuna
    from optuna.trial import TrialState

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and math.isfinite(t.values[0])
    ]
    if len(done) < 3:
        return {}
    # A single-objective in-memory copy without the diverged (inf) trials.
    tmp = optuna.create_study(direction="minimize")
    for t in done:
        tmp.add_trial(
            optuna.trial.create_trial(
                params=t.params, distributions=t.distributions, value=t.values[0]
            )
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        return dict(optuna.importance.get_param_importances(tmp, evaluator=evaluator))
    except (RuntimeError, ValueError):
        return {}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def search_warnings(table: Any, importance: dict[str, float]) -> list[str]:
    """What the user must know before acting on the search: an importance ranking from too
    few distinct models, or a best validation error so large that no trial learned."""
    warnings = []
    done = table[(table["state"] == "COMPLETE") & table["value_0"].astype(float).notna()]
    done = done[done["value_0"].astype(float) < math.inf] if len(done) else done
    distinct = int(done["same_as"].isna().sum()) if len(done) else 0
    if importance and distinct < MIN_IMPORTANCE_TRIALS:
        warnings.append(
            f"the parameter importances rest on {distinct} completed distinct model(s) (fewer "
            f"than {MIN_IMPORTANCE_TRIALS}): a sketch, not a ranking; run more --trials"
        )
    if len(done):
        best = float(done["value_0"].min())
        if best >= LEARNED_NOTHING_ERR:
            warnings.append(
                f"the best validation err_max is {best:.3g} (>= {LEARNED_NOTHING_ERR}): no trial "
                "fits the held-out parameters, so the search learned nothing about how to split "
                "the budget; raise --budget (or check the spec) before using its best setup"
            )
    return warnings


def _held_out(spec: StudySpec, held_out: np.ndarray | None) -> list[dict[str, float]]:
    if held_out is None:
        return []
    names = list(getattr(spec.data, "param_names", ()) or [])
    rows = np.atleast_2d(np.asarray(held_out, dtype=np.float64))
    if len(names) != rows.shape[1]:
        names = [f"mu{j}" for j in range(rows.shape[1])]
    return [dict(zip(names, map(float, row), strict=True)) for row in rows]


def write_outputs(
    study: Any,
    spec: StudySpec,
    setup: SearchSetup,
    out: Path,
    held_out: np.ndarray | None = None,
) -> dict[str, Any]:
    """``trials.csv``, ``best_spec.toml``, ``best_config.json``, the plots and ``summary.txt``
    (what :func:`format_summary` prints); returns the summary. ``held_out`` [n_val, n_p]: the
    validation parameters, written into the summary."""
    from analysis.figure_data import search_history, search_params
    from analysis.plots import (
        plot_importance,
        plot_pareto,
        plot_search_history,
        plot_search_params,
        save_png,
    )

    table = trials_table(study, setup)
    tmp = out / ".trials.csv.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, out / "trials.csv")
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    summary: dict[str, Any] = {
        "setup": setup.to_json(),
        "held_out": _held_out(spec, held_out),
        "states": counts,
        "n_trials": int(len(table)),
        "best": None,
        "files": ["trials.csv"],
    }
    history = search_history(table) if len(table) else None
    if history is not None and len(history):
        save_png(plot_search_history(history), out / "history.png")
        summary["files"].append("history.png")
        params = search_params(table)
        if len(params):
            save_png(plot_search_params(params), out / "params.png")
            summary["files"].append("params.png")
    imp = importances(study)
    if imp:
        save_png(plot_importance(imp), out / "importance.png")
        summary["files"].append("importance.png")
    summary["importance"] = imp
    summary["warnings"] = search_warnings(table, imp) if len(table) else []
    if setup.multi_objective and len(table) and (table["state"] == "COMPLETE").any():
        save_png(plot_pareto(table), out / "pareto.png")
        summary["files"].append("pareto.png")
    best = best_trial(study)
    if best is not None:
        cand = candidate_of(setup, best.params)
        config = rom_config(spec, setup, cand)
        from mlasdi.config import to_dict

        best_info: dict[str, Any] = {
            "number": best.number,
            "values": list(best.values),
            "params": used_params(best.params),
            "stage_iters": list(cand.stage_iters),
        }
        if cand.n_stages > 1:
            best_info["kappa"] = cand.kappa
            best_info["residual_hidden"] = list(cand.residual_hidden)
        best_info["rom_config"] = to_dict(config)
        _write_text(out / "best_config.json", json.dumps(best_info, indent=2))
        summary["files"].append("best_config.json")
        summary["best"] = {k: v for k, v in best_info.items() if k != "rom_config"}
        _write_text(out / "best_spec.toml", best_spec(spec, setup, cand).to_toml())
        summary["files"].append("best_spec.toml")
    summary["files"].append("summary.txt")
    _write_text(out / "summary.txt", format_summary(summary) + "\n")
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """The search's summary for its user: trial states, the best setup (with only the settings
    it uses), the held-out parameters it was judged on, warnings and the files written."""
    states = ", ".join(f"{k} {v}" for k, v in sorted(s["states"].items()))
    lines = [f"states: {states}" + (f"; wall {s['wall_s']:.1f} s" if "wall_s" in s else "")]
    b = s.get("best")
    if b:
        stages = f"stages {b['stage_iters']}"
        if len(b["stage_iters"]) > 1:
            stages += f", kappa {b['kappa']:.3g}, residual {b['residual_hidden']}"
        else:
            stages += " (one stage: GPLaSDI)"
        lines.append(f"best trial {b['number']}: {stages}, validation err_max {b['values'][0]:.4g}")
    else:
        lines.append("no completed trial with a finite validation error yet")
    held = s.get("held_out") or []
    if held:
        points = "; ".join(", ".join(f"{k} {v:.6g}" for k, v in p.items()) for p in held)
        lines.append(f"validation (held-out training parameters, {len(held)}): {points}")
    lines.extend(f"warning: {w}" for w in s.get("warnings", []))
    lines.append(f"wrote {', '.join(s['files'])}")
    return "\n".join(lines)
