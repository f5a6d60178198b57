"""The validation split: held-out training parameters, the only error a search ever reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlasdi.validation import validation_split
from studies.spec import StudySpec


@dataclass
class SearchData:
    """Arrays a trial needs: training-fit split and validation truth (never test-only points).

    U_fit : float32 [n_fit, n_t, n_state]; params_fit : [n_fit, n_p]; times : [n_t];
    params_val : [n_val, n_p]; truth_val : float32 [n_val, n_t, n_state].
    """

    U_fit: np.ndarray
    params_fit: np.ndarray
    times: np.ndarray
    params_val: np.ndarray
    truth_val: np.ndarray


def search_data(spec: StudySpec, val_fraction: float, seed: int) -> tuple[SearchData, np.ndarray]:
    """Load the spec's data (:func:`studies.trial.load_study_data`) and split off validation."""
    from mlasdi.study_data import load_study_data

    data = load_study_data(spec.data, progress=False)
    fit, val = validation_split(data.params_train, fraction=val_fraction, seed=seed)
    return (
        SearchData(
            U_fit=np.ascontiguousarray(data.U_train[fit]),
            params_fit=data.params_train[fit],
            times=data.times,
            params_val=data.params_train[val],
            truth_val=np.ascontiguousarray(data.U_train[val]),
        ),
        val,
    )
