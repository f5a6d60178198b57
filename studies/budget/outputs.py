"""What a search leaves in ``--out``: trials.csv, the figures, best_config.json, best_spec.toml."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from studies.budget.space import Candidate, SearchSetup, candidate_of, rom_config
from studies.spec import StudySpec, spec_from_dict


def trials_table(study: Any) -> Any:
    """One row per trial: ``number, state, value_0[, value_1], duration_s, params_*`` and the
    trial's stage iterations, validation error, training time and status (``trials.csv``)."""
    import pandas as pd

    multi = len(study.directions) > 1
    pareto = {t.number for t in study.best_trials} if multi else set()
    rows = []
    for t in study.get_trials(deepcopy=False):
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
        for k, v in sorted(t.params.items()):
            row[f"params_{k}"] = v
        ua = t.user_attrs
        row["stage_iters"] = "-".join(str(i) for i in ua.get("stage_iters", []))
        row["residual_hidden"] = "-".join(str(i) for i in ua.get("residual_hidden", []))
        row["last_step"] = t.last_step if t.last_step is not None else -1
        row["last_intermediate"] = (
            t.intermediate_values[t.last_step] if t.last_step is not None else math.nan
        )
        row["train_time_s"] = ua.get("train_time_s", math.nan)
        row["status"] = ua.get("status", "")
        row["message"] = ua.get("message", "")
        row["retry_of"] = ua.get("retry_of", -1)
        row["same_as"] = ua.get("same_as", -1)
        rows.append(row)
    return pd.DataFrame(rows)


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


def write_outputs(study: Any, spec: StudySpec, setup: SearchSetup, out: Path) -> dict[str, Any]:
    """``trials.csv``, ``best_spec.toml``, ``best_config.json`` and the plots; returns the
    summary."""
    from analysis.figure_data import search_history, search_params
    from analysis.plots import (
        plot_importance,
        plot_pareto,
        plot_search_history,
        plot_search_params,
        save_png,
    )

    table = trials_table(study)
    tmp = out / ".trials.csv.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, out / "trials.csv")
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    summary: dict[str, Any] = {
        "setup": setup.to_json(),
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
    if setup.multi_objective and len(table) and (table["state"] == "COMPLETE").any():
        save_png(plot_pareto(table), out / "pareto.png")
        summary["files"].append("pareto.png")
    best = best_trial(study)
    if best is not None:
        cand = candidate_of(setup, best.params)
        config = rom_config(spec, setup, cand)
        from mlasdi.config import to_dict

        best_info = {
            "number": best.number,
            "values": list(best.values),
            "params": best.params,
            "stage_iters": list(cand.stage_iters),
            "kappa": cand.kappa,
            "residual_hidden": list(cand.residual_hidden),
            "rom_config": to_dict(config),
        }
        _write_text(out / "best_config.json", json.dumps(best_info, indent=2))
        summary["files"].append("best_config.json")
        summary["best"] = {k: v for k, v in best_info.items() if k != "rom_config"}
        _write_text(out / "best_spec.toml", best_spec(spec, setup, cand).to_toml())
        summary["files"].append("best_spec.toml")
    return summary


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"states: {', '.join(f'{k} {v}' for k, v in sorted(s['states'].items()))}; "
        f"wall {s.get('wall_s', 0.0):.1f} s"
    ]
    b = s.get("best")
    if b:
        lines.append(
            f"best trial {b['number']}: stages {b['stage_iters']}, kappa {b['kappa']:.3g}, "
            f"residual {b['residual_hidden']}, validation err_max {b['values'][0]:.4g}"
        )
    else:
        lines.append("no completed trial with a finite validation error yet")
    lines.append(f"wrote {', '.join(s['files'])}")
    return "\n".join(lines)
