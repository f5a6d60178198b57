"""Shared, tiny, seeded fixtures (grids of 16-64 points, a few parameters)."""

import os

# One OpenBLAS thread, set before numpy/scipy load it. The GP hyperparameter fits (L-BFGS-B on 2-3
# points, thousands of tiny BLAS calls) run 5-20x slower with 2 BLAS threads on a busy 2-core
# machine (measured: the 110 coefficient GPs of 'mlasdi fit' 31 s vs 4.4 s; threadpoolctl limits
# set later were not enough). Results do not depend on it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

from mlasdi.config import (
    AutoencoderConfig,
    GPConfig,
    ResidualStageConfig,
    ROMConfig,
    Stage1Config,
)
from mlasdi.problems import oscillator

# One intra-op thread as well: the tensors here are tiny, and on a busy 2-core machine a 2-thread
# OpenMP region waits for both threads to be scheduled (measured stalls of 10-30 s per test).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # Seed 1234 for every test; each test that needs its own RNG states its seed explicitly.
    torch.manual_seed(1234)
    yield


# --- the multiscale oscillator on a tiny grid: 3 amplitudes x 33 times x 64 points -------------

TINY_NX, TINY_NT = 64, 33


@pytest.fixture(scope="session")
def tiny_oscillator():
    """SnapshotSet [3, 33, 64] at A = 1.0, 1.2, 1.4 (train on 1.0 and 1.4, test on 1.2)."""
    return oscillator.snapshot_set(n_x=TINY_NX, n_t=TINY_NT)


@pytest.fixture(scope="session")
def tiny_train(tiny_oscillator):
    """The training subset (A = 1.0, 1.4) of :func:`tiny_oscillator`."""
    index = tiny_oscillator.index_of(np.array(oscillator.TRAIN_AMPLITUDES)[:, None])
    return tiny_oscillator.subset(index)


def tiny_rom_config(*, n_stages: int = 2, iters: int = 30, dtype: str = "float32", seed: int = 7):
    """Hidden (16,), latent 3, ``iters`` per stage, GP without restarts, seed ``seed``."""
    return ROMConfig(
        autoencoder=AutoencoderConfig(hidden=(16,), latent_dim=3, activation="softplus"),
        stage1=Stage1Config(iters=iters),
        residual_stages=tuple(
            ResidualStageConfig(hidden=(16,), kappa=1.0, iters=iters) for _ in range(n_stages - 1)
        ),
        gp=GPConfig(n_restarts=0),
        dtype=dtype,
        seed=seed,
    )


@pytest.fixture(scope="session")
def tiny_config():
    """Factory of tiny ROM configs: ``tiny_config(n_stages=2, iters=30, dtype="float32", seed=7)``."""
    return tiny_rom_config


@pytest.fixture(scope="session")
def tiny_fit2(tiny_train):
    """A 2-stage float32 ROM trained 30 + 30 iterations on the tiny oscillator (seed 7)."""
    from mlasdi.fit import fit_rom

    return fit_rom(tiny_train, tiny_rom_config(), device="cpu")


@pytest.fixture(scope="session")
def tiny_fit2_f64(tiny_train):
    """The same in float64 (seed 7)."""
    from mlasdi.fit import fit_rom

    return fit_rom(tiny_train, tiny_rom_config(dtype="float64"), device="cpu")


def _latent_losses_through_qr(Z: torch.Tensor, dZdt: torch.Tensor):
    from mlasdi.dynamics import fit_affine, library

    Xi = fit_affine(Z, dZdt)
    dynamics = torch.nn.functional.mse_loss(library(Z) @ Xi, dZdt)
    return dynamics, torch.linalg.matrix_norm(Xi).mean()


@pytest.fixture(scope="session")
def latent_losses_through_qr():
    """(dynamics, coefficients) of the stage-1 loss by autograd through the QR least-squares fit:
    the plain formulation that ``mlasdi.dynamics.affine_fit_losses`` differentiates in closed form."""
    return _latent_losses_through_qr
