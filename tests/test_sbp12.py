"""GPLaSDI's ``sbp12`` time derivative: its matrix written out by hand, and its order of accuracy."""

import numpy as np
import pytest
import torch

from mlasdi.config import ConfigError, Stage1Config, from_dict
from mlasdi.dynamics import derivative_matrix, time_derivative


def test_sbp12_matrix_is_gplasdis_stencil():
    # LLNL/GPLaSDI src/lasdi/fd.py, SBP12: interior (-1/2, 0, 1/2), first row (-1, 1), last row
    # the first mirrored with opposite sign: (-1, 1) on the last two columns; all over dt.
    dt = 0.25
    expected = (
        np.array(
            [
                [-1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                [-0.5, 0.0, 0.5, 0.0, 0.0, 0.0],
                [0.0, -0.5, 0.0, 0.5, 0.0, 0.0],
                [0.0, 0.0, -0.5, 0.0, 0.5, 0.0],
                [0.0, 0.0, 0.0, -0.5, 0.0, 0.5],
                [0.0, 0.0, 0.0, 0.0, -1.0, 1.0],
            ]
        )
        / dt
    )
    D = derivative_matrix(6, dt, "sbp12")
    assert D.dtype == torch.float64
    np.testing.assert_array_equal(D.numpy(), expected)


def test_sbp12_needs_three_points():
    with pytest.raises(ValueError, match="at least 3 time points"):
        derivative_matrix(2, 0.1, "sbp12")


def test_sbp12_is_exact_on_lines_and_interior_exact_on_parabolas():
    t = torch.linspace(0.0, 2.0, 11, dtype=torch.float64)
    dt = float(t[1] - t[0])
    line = (3.0 * t - 1.0)[:, None]
    np.testing.assert_allclose(time_derivative(line, dt, "sbp12").numpy(), 3.0, rtol=1e-12)
    parabola = (t**2)[:, None]
    d = time_derivative(parabola, dt, "sbp12")[:, 0].numpy()
    np.testing.assert_allclose(d[1:-1], 2 * t[1:-1].numpy(), rtol=1e-12)
    # first order at the ends: forward difference of t^2 at 0 is dt, backward at 2 is 4 - dt
    np.testing.assert_allclose([d[0], d[-1]], [dt, 4.0 - dt], rtol=1e-12)


def _errors(n: int) -> tuple[float, float]:
    """(interior, boundary) max errors of sbp12 on sin(t), t in [0, 1], n points."""
    t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    error = time_derivative(torch.sin(t)[:, None], 1.0 / (n - 1), "sbp12")[:, 0] - torch.cos(t)
    error = error.abs()
    return float(error[1:-1].max()), float(max(error[0], error[-1]))


def test_sbp12_order_of_accuracy_on_sine():
    coarse, fine = _errors(41), _errors(81)
    interior_order = np.log2(coarse[0] / fine[0])
    boundary_order = np.log2(coarse[1] / fine[1])
    assert abs(interior_order - 2.0) < 0.05
    assert abs(boundary_order - 1.0) < 0.05


def test_stage1_config_accepts_sbp12_and_rejects_unknown_schemes():
    assert from_dict(Stage1Config, {"fd_scheme": "sbp12"}).fd_scheme == "sbp12"
    with pytest.raises(ConfigError, match="stage1.fd_scheme must be one of"):
        Stage1Config(fd_scheme="sbp24")


def test_study_spec_passes_sbp12_to_stage1():
    from studies.spec import spec_from_dict

    raw = {
        "name": "t",
        "seeds": [0],
        "data": {"problem": "oscillator", "nx": 40, "n_t": 21, "grid": [3]},
        "gplasdi": {"hidden": [[12]], "latent_dims": [2], "budgets": [10]},
        "training": {"fd_scheme": "sbp12"},
    }
    config = spec_from_dict(raw).rom_config(hidden=(12,), latent_dim=2, seed=0, stage_iters=(10,))
    assert config.stage1.fd_scheme == "sbp12"
