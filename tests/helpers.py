"""Helpers that several test modules share: a user's snapshot file with a closed-form solution
and a study spec over it, and running one study trial in process and reading its rows."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from mlasdi.data import SnapshotSet
from studies.spec import dump_toml
from studies.trial import TrialRunner

MODES = ((1, 1.0, 0.0), (2, 0.5, 0.3), (3, 0.25, 1.1))  # (k, a_k, phi_k)


def advection_diffusion(params: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """u [n_mu, n_t, n_x] for rows (c, nu) of ``params``: the exact Fourier solution."""
    c = params[:, 0, None, None]
    nu = params[:, 1, None, None]
    tt, xx = t[None, :, None], x[None, None, :]
    return sum(a * np.exp(-nu * k**2 * tt) * np.sin(k * (xx - c * tt) + phi) for k, a, phi in MODES)


def advection_set(n_c: int = 3, n_nu: int = 3, n_x: int = 16, n_t: int = 9) -> SnapshotSet:
    """:func:`advection_diffusion` on ``n_c`` x ``n_nu`` (c, nu) in [0.5, 1.5] x [0.01, 0.05],
    ``n_x`` periodic points on [0, 2 pi) and ``n_t`` times on [0, 2]."""
    c = np.linspace(0.5, 1.5, n_c)
    nu = np.linspace(0.01, 0.05, n_nu)
    params = np.stack([g.ravel() for g in np.meshgrid(c, nu, indexing="ij")], axis=1)
    x = 2 * np.pi * np.arange(n_x) / n_x
    t = np.linspace(0.0, 2.0, n_t)
    return SnapshotSet(
        params=params,
        times=t,
        snapshots=advection_diffusion(params, x, t),
        param_names=("c", "nu"),
        coords={"x": x},
        settings={"problem": "advection-diffusion"},
    )


def file_spec(tmp_path: Path, file: Any, name: str = "adv", **data_keys: Any) -> str:
    """A spec file ``tmp_path/NAME.toml`` of a tiny gplasdi/mlasdi study over the snapshot
    file ``file`` (its ``[data]`` table takes ``data_keys``); returns its path."""
    raw = {
        "name": name,
        "seeds": [0],
        "data": {"file": str(file), **data_keys},
        "gplasdi": {"hidden": [[10]], "latent_dims": [2], "budgets": [10, 20]},
        "mlasdi": {"hidden": [[8]], "latent_dims": [2], "budgets": [[10, 10], [10, 20]]},
        "training": {"gp": {"n_restarts": 0}},
    }
    path = tmp_path / f"{name}.toml"
    path.write_text(dump_toml(raw))
    return str(path)


def run_trial(
    spec: Any, data: Any, t: Any, finished: frozenset[str] = frozenset(), state: Any = None
) -> list[tuple[dict[str, Any], Any]]:
    """Run study trial ``t`` in this process; its reports ``(metrics, state)`` in order."""
    reports: list[tuple[dict[str, Any], Any]] = []
    # States are live references to the trainer tensors (Tune serialises them at once): copy.
    TrialRunner(
        t, spec, data, finished, lambda m, s: reports.append((m, copy.deepcopy(s))), state
    ).run()
    return reports


def eval_rows(reports: list[tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    """``{evaluation_id: payload}`` of the evaluation reports of :func:`run_trial`."""
    return {m["evaluation_id"]: json.loads(m["payload"]) for m, _ in reports if m["kind"] == "eval"}


def assert_same_rows(got: dict, want: dict) -> None:
    """Rows equal except wall times and creation stamps; r(mu) bit for bit."""
    assert sorted(got) == sorted(want)
    volatile = {"train_time_s", "stage_times_s", "eval_time_s", "uq_time_s", "created_at"}
    for eid in want:
        a, b = got[eid]["row"], want[eid]["row"]
        assert {k: v for k, v in a.items() if k not in volatile} == {
            k: v for k, v in b.items() if k not in volatile
        }, eid
        np.testing.assert_array_equal(got[eid]["param_err"], want[eid]["param_err"], err_msg=eid)
