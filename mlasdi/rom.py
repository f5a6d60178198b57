"""The multi-stage ROM: predict snapshots for any parameters from its trained stages.

Prediction for parameters mu (DESIGN.md): z0 = enc(u0(mu)); latent-dynamics coefficients from the
GP mean (or a posterior sample); z(t) from the exact (or RK4) integrator on the snapshot times;
u~ = dec1(z) + e1 dec2(z) + e2 dec3(z) + ...

The pieces (:func:`stage1_trainer`, :func:`stage1_rom`, :func:`residual_stage_data`,
``ResidualTrainer``, :meth:`MultiStageROM.with_stage`) are what the stage engine
(:mod:`mlasdi.engine`) trains and assembles; :func:`mlasdi.fit.fit_rom` runs the whole pipeline.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlasdi.config import ConfigError, ROMConfig, from_dict, to_dict
from mlasdi.data import SnapshotReader
from mlasdi.dynamics import fit_affine, integrate, split_coefficients, time_derivative
from mlasdi.interpolation import CoefficientGP
from mlasdi.metrics import max_relative_error, relative_error_over_time
from mlasdi.nn import Autoencoder, ResidualDecoder, count_parameters
from mlasdi.train import BestCheckpoint, CheckpointReport, DivergenceError, Stage1Trainer
from mlasdi.validation import DEFAULT_SPLIT, Split

SAVE_FORMAT_VERSION = 2  # 2: the autoencoder state holds its standardisation
# A predicted latent trajectory this many times larger than the training latents has blown up.
LATENT_BLOWUP_FACTOR = 1e3
# Snapshot values in one batch of :func:`evaluate` at most (32 MiB in float32): 8 parameters of
# Burgers' 1001 times x 1001 nodes, where 32 parameters would add 600 MiB to a trial's peak.
EVAL_BATCH_VALUES = 2**23


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when available, else CPU; otherwise the device named (``cpu``,
    ``cuda``, ``cuda:N``), checked against this machine: :class:`~mlasdi.config.ConfigError`
    (one line) when it is not a device name or names a GPU this machine does not have."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"device {device}: CUDA is not available on this machine (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda or 'no'}); use the cpu "
                "device, or install the CUDA build of torch on a machine with an NVIDIA GPU"
            )
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {device}: this machine has {count} CUDA device(s)")
    return dev


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


@dataclass
class MultiStageROM:
    """A trained ROM with ``1 + len(residual_decoders)`` stages.

    Attributes
    ----------
    autoencoder : stage 1 (frozen once the ROM is built).
    gp : interpolates the flattened coefficients Xi [r + 1, r] over parameters.
    times : [n_t] snapshot times the latent ODE is integrated to.
    config : the configuration it was trained with.
    residual_decoders, scales : stage k >= 2 decoders and their e_{k-1}.
    latent_bound : max |z| over the training latents (for blow-up detection).
    """

    autoencoder: Autoencoder
    gp: CoefficientGP
    times: np.ndarray
    config: ROMConfig
    residual_decoders: list[ResidualDecoder] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    latent_bound: float = 1.0

    @property
    def n_stages(self) -> int:
        return 1 + len(self.residual_decoders)

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    @property
    def n_model_params(self) -> int:
        """Trainable scalars of every network used at prediction (encoder, decoders)."""
        return count_parameters(self.autoencoder) + sum(
            map(count_parameters, self.residual_decoders)
        )

    def to(self, device: str | torch.device) -> MultiStageROM:
        device = resolve_device(device)
        self.autoencoder.to(device)
        for decoder in self.residual_decoders:
            decoder.to(device)
        return self

    def with_stage(self, decoder: ResidualDecoder, scale: float) -> MultiStageROM:
        """A new ROM with one more residual stage (the networks are shared, not copied)."""
        return MultiStageROM(
            autoencoder=self.autoencoder,
            gp=self.gp,
            times=self.times,
            config=self.config,
            residual_decoders=[*self.residual_decoders, decoder],
            scales=[*self.scales, float(scale)],
            latent_bound=self.latent_bound,
        )

    def tensor(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``array`` as a tensor on the ROM's device and dtype."""
        if isinstance(array, np.ndarray) and not array.flags.writeable:
            # A read-only (e.g. shared-memory) array: copy the batch rather than alias memory
            # torch assumes writable.
            array = np.array(array)
        return torch.as_tensor(array).to(device=self.device, dtype=self.dtype)

    def coefficients(self, params: np.ndarray, *, sample_seed: int | None = None) -> torch.Tensor:
        """Xi [n, r + 1, r] at ``params`` [n, n_p]: the GP mean, or one posterior draw."""
        params = np.atleast_2d(np.asarray(params, dtype=np.float64))
        if sample_seed is None:
            flat, _ = self.gp.predict(params)
        else:
            flat = self.gp.sample(params, 1, sample_seed)[0]
        r = self.autoencoder.latent_dim
        return torch.as_tensor(flat.reshape(-1, r + 1, r), device=self.device, dtype=torch.float64)

    @torch.no_grad()
    def latent_trajectories(
        self,
        params: np.ndarray,
        u0: np.ndarray | torch.Tensor,
        *,
        times: np.ndarray | None = None,
        sample_seed: int | None = None,
        coefficients: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Z [n, n_t, r] from z0 = enc(u0), u0 [n, n_state], at ``times`` [n_t] (uniform, from
        the initial time; default the training snapshot times :attr:`times`): ``expm`` is exact
        at any times, ``rk4`` steps on their grid. Raises DivergenceError on blow-up.
        ``coefficients``: :meth:`coefficients` of ``params``, when the caller has them already
        (a GP prediction per chunk of a long evaluation costs more than the chunk)."""
        z0 = self.autoencoder.encode(self.tensor(u0))
        if coefficients is None:
            coefficients = self.coefficients(params, sample_seed=sample_seed)
        A, b = split_coefficients(coefficients)
        times = self.times if times is None else times
        times = torch.as_tensor(times, dtype=torch.float64, device=self.device)
        Z = integrate(
            A, b, z0, times, method=self.config.integrator, rk4_substeps=self.config.rk4_substeps
        )
        peak = Z.abs().amax() if Z.numel() else torch.zeros(())
        if not bool(torch.isfinite(peak)) or float(peak) > LATENT_BLOWUP_FACTOR * self.latent_bound:
            raise DivergenceError(
                f"predicted latent trajectories blew up (max |z| = {float(peak):.3g}, "
                f"training latents reach {self.latent_bound:.3g})"
            )
        return Z

    @torch.no_grad()
    def decode_by_stage(self, Z: torch.Tensor) -> Iterator[torch.Tensor]:
        """Cumulative predictions [n, n_t, n_state] after stage 1, 1..2, ..., one at a time."""
        prediction = self.autoencoder.decode(Z)
        yield prediction
        for decoder, scale in zip(self.residual_decoders, self.scales, strict=True):
            prediction = prediction + scale * decoder(Z)
            yield prediction

    @torch.no_grad()
    def predict(
        self,
        params: np.ndarray,
        u0: np.ndarray | torch.Tensor,
        *,
        n_stages: int | None = None,
        sample_seed: int | None = None,
    ) -> torch.Tensor:
        """Predicted snapshots [n, n_t, n_state] using the first ``n_stages`` stages (default all)."""
        n_stages = self.n_stages if n_stages is None else n_stages
        if not 1 <= n_stages <= self.n_stages:
            raise ValueError(f"n_stages must be in 1..{self.n_stages}, got {n_stages}")
        Z = self.latent_trajectories(params, u0, sample_seed=sample_seed)
        return next(itertools.islice(self.decode_by_stage(Z), n_stages - 1, None))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json``, ``weights.pt`` (state dicts) and ``gp.npz``; no pickle."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": SAVE_FORMAT_VERSION,
            "config": to_dict(self.config),
            "n_state": self.autoencoder.n_state,
            "scales": self.scales,
            "latent_bound": self.latent_bound,
        }
        weights = {"autoencoder": self.autoencoder.state_dict()}
        for i, decoder in enumerate(self.residual_decoders):
            weights[f"residual_{i}"] = decoder.state_dict()
        torch.save(weights, directory / "weights.pt")
        np.savez(directory / "gp.npz", times=self.times, **self.gp.state())
        (directory / "config.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, device: str | torch.device = "auto"
    ) -> MultiStageROM:
        """Inverse of :meth:`save` (``torch.load(weights_only=True)``, ``allow_pickle=False``)."""
        directory = Path(directory)
        meta = json.loads((directory / "config.json").read_text())
        if meta.get("format_version") != SAVE_FORMAT_VERSION:
            raise ValueError(
                f"{directory} has ROM format {meta.get('format_version')}, expected {SAVE_FORMAT_VERSION}"
            )
        config = from_dict(ROMConfig, meta["config"])
        device = resolve_device(device)
        dtype = torch_dtype(config.dtype)
        weights = torch.load(directory / "weights.pt", map_location=device, weights_only=True)
        ae = config.autoencoder
        # Modules in the saved dtype before loading: load_state_dict copies into the module's
        # dtype, and a float64 ROM loaded into float32 modules would lose its low bits.
        autoencoder = Autoencoder(meta["n_state"], ae.hidden, ae.latent_dim, ae.activation)
        autoencoder.to(device=device, dtype=dtype).load_state_dict(weights["autoencoder"])
        decoders = []
        for i, stage in enumerate(config.residual_stages[: len(meta["scales"])]):
            decoder = ResidualDecoder(
                ae.latent_dim,
                stage.hidden,
                meta["n_state"],
                kappa=stage.kappa,
                activation=stage.activation,
            )
            decoder.to(device=device, dtype=dtype).load_state_dict(weights[f"residual_{i}"])
            decoders.append(decoder.eval())
        with np.load(directory / "gp.npz", allow_pickle=False) as arrays:
            state = {k: arrays[k] for k in arrays.files}
        times = state.pop("times")
        gp = CoefficientGP.from_state(config.gp, config.seed, state)
        return cls(
            autoencoder=autoencoder.eval(),
            gp=gp,
            times=times,
            config=config,
            residual_decoders=decoders,
            scales=[float(s) for s in meta["scales"]],
            latent_bound=float(meta["latent_bound"]),
        )


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, no gradients (and no gradient buffers kept): a finished stage."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
        p.grad = None
    return module


@torch.no_grad()
def stage1_rom(
    autoencoder: Autoencoder,
    U_train: torch.Tensor,
    params_train: np.ndarray,
    times: np.ndarray,
    config: ROMConfig,
    *,
    gp_start: np.ndarray | None = None,
) -> MultiStageROM:
    """Freeze a (copy of a) trained autoencoder into a one-stage ROM (GPLaSDI).

    The coefficients at the training parameters are refitted in float64 from the encoded training
    trajectories (the same least squares as in training), then interpolated by the GP (its
    hyperparameters warm-started from ``gp_start``: :meth:`CoefficientGP.fit`'s ``start``).
    """
    model = freeze(copy.deepcopy(autoencoder))
    Z = model.encode(U_train).to(torch.float64)
    dt = float(times[1] - times[0])
    Xi = fit_affine(Z, time_derivative(Z, dt, config.stage1.fd_scheme))
    if not bool(torch.isfinite(Xi).all()):
        raise DivergenceError("latent dynamics coefficients are not finite")
    gp = CoefficientGP(config.gp, config.seed).fit(
        params_train,
        Xi.reshape(Xi.shape[0], -1).cpu().numpy(),
        # A warm start is one short optimisation per coefficient: forking workers for it costs
        # more than it saves (measured on burgers1d_gplasdi's selection, 0.2 s against 0.15 s).
        workers=torch.get_num_threads() if gp_start is None else 1,
        start=gp_start,
    )
    return MultiStageROM(
        autoencoder=model,
        gp=gp,
        times=np.asarray(times, dtype=np.float64),
        config=config,
        latent_bound=float(Z.abs().amax()),
    )


@dataclass(frozen=True)
class HeldOut:
    """A split of the training parameters: ``U_fit`` [n_fit, n_t, n_state] and ``params_fit``
    train, ``U_val`` and ``params_val`` judge (a stage-1 checkpoint, a residual stage)."""

    U_fit: torch.Tensor
    params_fit: np.ndarray
    U_val: torch.Tensor
    params_val: np.ndarray

    @classmethod
    def split(cls, U: torch.Tensor, params: np.ndarray, split: Split = DEFAULT_SPLIT) -> HeldOut:
        """``split`` (:class:`~mlasdi.validation.Split`) of training snapshots ``U`` at
        ``params``."""
        fit, val = split.indices(np.asarray(params))
        return cls(U[fit], params[fit], U[val], params[val])


def held_out_rom(
    rom: MultiStageROM, held_out: HeldOut, *, gp_start: np.ndarray | None = None
) -> MultiStageROM:
    """``rom`` (sharing its networks) with the GP of its dynamics coefficients refitted on the
    fit split only, the coefficients fitted as in :func:`stage1_rom` (``gp_start``: its warm
    start): its latent trajectories at the held-out parameters are interpolated, as at unseen
    parameters."""
    refit = stage1_rom(
        rom.autoencoder,
        held_out.U_fit,
        held_out.params_fit,
        rom.times,
        rom.config,
        gp_start=gp_start,
    )
    return dataclasses.replace(rom, gp=refit.gp)


class Stage1Selector(BestCheckpoint):
    """Scores a stage-1 autoencoder by the held-out max error of its one-stage ROM: max over the
    held-out parameters of r(mu) (:mod:`mlasdi.metrics`), with their dynamics coefficients
    interpolated by a GP fitted on the fit split only (as :func:`held_out_rom`), so that they
    are predicted as at unseen parameters. Training data only: no test parameter is read.

    Why held out: the residual stages fit what stage 1 leaves at the training parameters, so
    what a checkpoint brings to the final model is how its latent dynamics interpolate. On the
    vlasov_quick data (docs/studies.md) the in-sample ROM error chose a checkpoint of
    mLaSDI [50] latent 4 seed 2 whose 2-stage model had 1.66 % test err_mean, this score one
    with 1.11 %; on the other five models both chose the same checkpoint.

    Cost: the GP fit dominates a score, and its hyperparameter search (``gp.n_restarts``
    random starts) dominates the fit. Only the first grid checkpoint searches; each later one
    starts the search once from the hyperparameters of the grid checkpoint before it
    (:attr:`gp_theta`, saved with the selector's state), which the coefficients of 100
    iterations later are close to. On a reduced burgers1d_gplasdi (benchmarks/selection_cost.py)
    that took selection from more than training itself to a small share of it.
    """

    def __init__(self, held_out: HeldOut, times: np.ndarray, config: ROMConfig, every: int) -> None:
        super().__init__(every)
        self.held_out, self.times, self.config = held_out, times, config
        # GP hyperparameters [n_coef, n_theta] of the last grid checkpoint's fit (None before
        # the first), and of the last fit of any model (committed by observe: a score of the
        # live model at a stop off the grid must not change later grid scores).
        self.gp_theta: np.ndarray | None = None
        self.last_theta: np.ndarray | None = None

    @torch.no_grad()
    def error(self, model: torch.nn.Module) -> float:
        h = self.held_out
        try:
            rom = stage1_rom(
                model,  # type: ignore[arg-type]
                h.U_fit,
                h.params_fit,
                self.times,
                self.config,
                gp_start=self.gp_theta,
            )
            self.last_theta = rom.gp.state()["kernel_theta"]
            prediction = rom.predict(h.params_val, h.U_val[:, 0])
        except DivergenceError:
            return float("inf")
        err = float(max_relative_error(h.U_val, prediction).max())
        return err if np.isfinite(err) else float("inf")

    def observe(self, report: CheckpointReport) -> None:
        super().observe(report)
        self.gp_theta = self.last_theta

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.gp_theta is not None:
            state["gp_theta"] = torch.from_numpy(self.gp_theta.copy())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        theta = state.get("gp_theta")
        self.gp_theta = None if theta is None else theta.numpy().copy()
        self.last_theta = self.gp_theta


def stage1_trainer(
    U: torch.Tensor,
    params: np.ndarray,
    times: np.ndarray,
    config: ROMConfig,
    split: Split = DEFAULT_SPLIT,
) -> Stage1Trainer:
    """A fresh stage-1 trainer for ``config`` on snapshots ``U`` [n, n_t, n_state] at ``params``
    (weights fixed by ``config.seed``); with ``stage1.select_every`` it keeps its best checkpoint
    by :class:`Stage1Selector` on the ``split`` of the training parameters (the one a residual
    stage's acceptance holds out: :class:`mlasdi.engine.EngineConfig` carries it)."""
    ae = config.autoencoder
    dt = float(times[1] - times[0])
    trainer = Stage1Trainer.create(
        U, dt, ae.hidden, ae.latent_dim, ae.activation, config.stage1, config.seed
    )
    if config.stage1.select_every:
        held_out = HeldOut.split(U, np.asarray(params), split)
        trainer.selector = Stage1Selector(held_out, times, config, config.stage1.select_every)
    return trainer


@torch.no_grad()
def residual_stage_data(
    rom: MultiStageROM, U_train: torch.Tensor, params_train: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(Z_pred [n, n_t, r], R / e [n, n_t, n_state], e) for training the next residual stage.

    Z_pred are the predicted latent trajectories at the training parameters (GP mean), R is the
    residual of the ROM's current prediction and e = std(R), a scalar.
    """
    Z = rom.latent_trajectories(params_train, U_train[:, 0])
    *_, prediction = rom.decode_by_stage(Z)
    residual = U_train - prediction
    scale = float(residual.std())
    if not np.isfinite(scale) or scale == 0.0:
        raise DivergenceError(f"residual scale is {scale}: nothing left to fit or a blow-up")
    return Z, residual / scale, scale


def residual_stage_seed(seed: int, stage: int) -> int:
    """Seed of the decoder of residual stage ``stage`` (2, 3, ...) of a ROM seeded with ``seed``."""
    return seed + stage - 1


@torch.no_grad()
def evaluate(
    rom: MultiStageROM,
    params: np.ndarray,
    truth: np.ndarray | SnapshotReader,
    *,
    u0: np.ndarray | None = None,
    times: np.ndarray | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Per-time relative errors [n_stages, n, n_t] of the cumulative stage predictions.

    ``truth`` [n, n_t, n_state] (any float dtype, host memory; or anything with ``.shape`` whose
    ``truth[start:stop]`` is such an array, e.g. a :class:`~mlasdi.data.SnapshotReader`) is read
    and moved to the device a batch of parameters at a time, so neither the truth nor the full
    prediction has to fit in memory. ``u0`` defaults to each batch's ``truth[:, 0]``; ``times``
    [n_t] (default ``rom.times``) are the truth's times, which the latent ODE is integrated to.
    ``errors.max(-1)`` gives r(mu) for each stage count. A batch is ``batch_size`` parameters,
    or fewer where that would hold more than :data:`EVAL_BATCH_VALUES` snapshot values: a batch
    holds a few arrays of that size (truth, prediction, difference), so the memory an evaluation
    adds stays about the same whatever the grid.
    """
    params = np.atleast_2d(np.asarray(params, dtype=np.float64))
    times = rom.times if times is None else np.asarray(times, dtype=np.float64)
    if truth.shape[1] != times.size:
        raise ValueError(
            f"truth has {truth.shape[1]} times but the predictions {times.size}; pass its times"
        )
    batch_size = max(1, min(batch_size, EVAL_BATCH_VALUES // (truth.shape[1] * truth.shape[2])))
    errors = np.empty((rom.n_stages, params.shape[0], truth.shape[1]))
    for start in range(0, params.shape[0], batch_size):
        stop = min(start + batch_size, params.shape[0])
        U = rom.tensor(truth[start:stop])
        first = U[:, 0] if u0 is None else u0[start:stop]
        Z = rom.latent_trajectories(params[start:stop], first, times=times)
        for stage, prediction in enumerate(rom.decode_by_stage(Z)):
            errors[stage, start:stop] = relative_error_over_time(U, prediction).cpu().numpy()
    return errors
