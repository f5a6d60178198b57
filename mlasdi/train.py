"""Full-batch training loops for stage 1 (autoencoder + latent dynamics) and residual stages.

The loops do no printing and no file writes. A caller asks for ``checkpoints`` (iteration
numbers) and gets a ``callback(report)`` at each, with the model live: copy it (``copy.deepcopy``
or ``state_dict``) to keep that state, e.g. to evaluate a GPLaSDI model at 25k iterations and to
branch a residual stage from it while stage 1 goes on to 50k. A trainer can be saved and resumed
exactly (:meth:`FullBatchTrainer.state_dict`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlasdi.config import ResidualStageConfig, Stage1Config
from mlasdi.dynamics import fit_affine, library, time_derivative
from mlasdi.nn import Autoencoder, ResidualDecoder

COSINE_FLOOR = 1e-2  # a cosine schedule ends at this fraction of the initial learning rate


class DivergenceError(RuntimeError):
    """The training loss became NaN or Inf."""


@dataclass(frozen=True)
class CheckpointReport:
    """What a trainer reports at a requested iteration."""

    iteration: int
    loss: dict[str, float]
    elapsed_s: float  # training wall time of this trainer so far (all calls to train)
    model: nn.Module


Callback = Callable[[CheckpointReport], None]


def check_checkpoints(checkpoints: Sequence[int], start: int, until: int) -> list[int]:
    """Validate iteration checkpoints: strictly increasing integers in (start, until]."""
    points = list(checkpoints)
    if any(not isinstance(c, int) or isinstance(c, bool) for c in points):
        raise ValueError(f"iteration checkpoints must be integers, got {points}")
    if any(b <= a for a, b in zip(points, points[1:], strict=False)):
        raise ValueError(f"iteration checkpoints must be strictly increasing, got {points}")
    if points and (points[0] <= start or points[-1] > until):
        raise ValueError(
            f"iteration checkpoints must lie in ({start}, {until}], got {points[0]}..{points[-1]}"
        )
    return points


class _LinearMSE(torch.autograd.Function):
    """mean((h W^T + b - Y)^2) with the output never materialised twice (see linear_mse_loss)."""

    @staticmethod
    def forward(ctx, h, weight, bias, neg_target, out):  # type: ignore[override]
        # One GEMM writes the difference d = h W^T + b - Y directly: -Y is the accumulator
        # (beta = 1) and the bias rides along as an extra input column of ones. d goes to the
        # caller's persistent buffer: a fresh [N, n_state] tensor every iteration costs more in
        # page faults than the GEMM itself on CPU.
        ones = torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)
        h1 = torch.cat([h, ones], dim=1)
        weight_bias = torch.cat([weight, bias[:, None]], dim=1)
        d = torch.addmm(neg_target, h1, weight_bias.T, out=out)
        ctx.save_for_backward(h1, weight_bias, d)
        return torch.dot(d.view(-1), d.view(-1)) / d.numel()

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        h1, weight_bias, d = ctx.saved_tensors
        scale = grad_loss * (2.0 / d.numel())
        grad_h = (d @ weight_bias[:, :-1]) * scale
        grad_weight_bias = (d.T @ h1) * scale
        return grad_h, grad_weight_bias[:, :-1], grad_weight_bias[:, -1], None, None


def linear_mse_loss(
    h: torch.Tensor, layer: nn.Linear, neg_target: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """MSE(layer(h), Y) given ``neg_target`` = -Y, fused for large outputs.

    ``out`` (shaped like ``neg_target``) receives layer(h) - Y and is kept for the backward pass,
    so it must not be reused before ``backward`` has run.

    Equal to ``mse_loss(layer(h), Y)`` in exact arithmetic. The output layer of a decoder maps
    [N, k] to [N, n_state] with n_state >> k; the naive form streams the [N, n_state] tensor about
    a dozen times (bias broadcast, GEMM, subtraction, squared sum, gradient fill, gradient,
    bias-gradient sum). Here it is written once by a GEMM, read once by a dot product and twice by
    the backward GEMMs, and the 2/N gradient scale is applied to the small results.
    """
    return _LinearMSE.apply(h, layer.weight, layer.bias, neg_target, out)


def make_adam(
    params: Sequence[nn.Parameter] | object, lr: float, device: torch.device
) -> torch.optim.Adam:
    """Adam with the fused kernel (one launch for every tensor) on CPU and CUDA."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))


class FullBatchTrainer:
    """Adam on a full-batch loss; subclasses define :meth:`loss_terms`.

    ``train(until)`` runs iterations ``self.iteration + 1 .. until``; the loss terms of every
    iteration are kept on the device (``history`` [iterations, n_terms]) and read back only at
    checkpoints and divergence checks, so the loop never waits on the host.
    """

    term_names: tuple[str, ...] = ("loss",)

    def __init__(
        self, model: nn.Module, device: torch.device, config: Stage1Config | ResidualStageConfig
    ) -> None:
        self.model = model
        self.device = device
        self.optimizer = make_adam(list(model.parameters()), config.lr, device)
        self.lr = config.lr
        self.lr_schedule = config.lr_schedule
        self.schedule_iters = config.iters
        self.iteration = 0
        self.elapsed_s = 0.0
        self._history: list[torch.Tensor] = []

    def loss_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, stacked terms [n_terms]) for the current parameters."""
        raise NotImplementedError

    def learning_rate(self, iteration: int) -> float:
        """Learning rate of step ``iteration`` (0-based).

        ``cosine`` decays from lr to lr / 100 over ``schedule_iters`` steps. Note that a cosine
        run evaluated before its end is not the model a shorter cosine run would give, so studies
        that share checkpoints between budgets use ``constant``.
        """
        if self.lr_schedule == "constant":
            return self.lr
        floor = self.lr * COSINE_FLOOR
        progress = min(iteration / self.schedule_iters, 1.0)
        return floor + 0.5 * (self.lr - floor) * (1.0 + math.cos(math.pi * progress))

    def step(self) -> torch.Tensor:
        if self.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(self.iteration)
        self.optimizer.zero_grad(set_to_none=True)
        loss, terms = self.loss_terms()
        loss.backward()
        self.optimizer.step()
        return terms.detach()

    def train(
        self,
        until: int,
        *,
        checkpoints: Sequence[int] = (),
        callback: Callback | None = None,
        divergence_check_every: int = 1000,
    ) -> None:
        """Train up to iteration ``until``, calling ``callback`` at each checkpoint."""
        if until < self.iteration:
            raise ValueError(f"cannot train back to iteration {until} from {self.iteration}")
        points = check_checkpoints(checkpoints, self.iteration, until)
        stops = sorted(set(points) | {until})
        self.model.train()
        for stop in stops:
            start_time = time.perf_counter()
            block: list[torch.Tensor] = []
            while self.iteration < stop:
                block.append(self.step())
                self.iteration += 1
                if self.iteration % divergence_check_every == 0:
                    self._check_finite(block[-1])
            if block:
                self._history.append(torch.stack(block))
                self._check_finite(block[-1])
            self.elapsed_s += time.perf_counter() - start_time
            if stop in points and callback is not None:
                callback(
                    CheckpointReport(
                        iteration=self.iteration,
                        loss=self.last_loss(),
                        elapsed_s=self.elapsed_s,
                        model=self.model,
                    )
                )

    def _check_finite(self, terms: torch.Tensor) -> None:
        if not bool(torch.isfinite(terms).all()):
            raise DivergenceError(
                f"loss is not finite at iteration {self.iteration}: "
                + ", ".join(
                    f"{n}={v:.3g}" for n, v in zip(self.term_names, terms.tolist(), strict=True)
                )
            )

    @property
    def history(self) -> torch.Tensor:
        """[iterations trained by this object, n_terms] loss terms (on the host)."""
        if not self._history:
            return torch.empty(0, len(self.term_names))
        self._history = [torch.cat(self._history)]
        return self._history[0].cpu()

    def last_loss(self) -> dict[str, float]:
        if not self._history:
            return {}
        return dict(zip(self.term_names, self._history[-1][-1].tolist(), strict=True))

    def state_dict(self) -> dict[str, object]:
        """Everything needed to resume training exactly (model, optimiser, iteration).

        A snapshot: deep copies, unaffected by further training.
        """
        return copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "iteration": self.iteration,
                "elapsed_s": self.elapsed_s,
            }
        )

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self.iteration = int(state["iteration"])  # type: ignore[arg-type]
        self.elapsed_s = float(state["elapsed_s"])  # type: ignore[arg-type]


def _seeded_module(
    build: Callable[[], nn.Module], seed: int, dtype: torch.dtype, device: torch.device
) -> nn.Module:
    # Initialise from a private RNG stream so that a seed fixes the weights whatever the caller's
    # global RNG state is.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
    return module.to(dtype=dtype, device=device)


class Stage1Trainer(FullBatchTrainer):
    """GPLaSDI stage 1: autoencoder and linear latent dynamics trained jointly.

    ``U`` [n_train, n_t, n_state] on the training device; ``dt`` the snapshot spacing.
    loss = MSE(U, dec(enc(U))) + beta1 mean_i MSE(dz_i/dt, [1, z_i] Xi_i) + beta2 mean_i ||Xi_i||_F
    """

    term_names = ("loss", "reconstruction", "dynamics", "coefficients")

    def __init__(
        self,
        U: torch.Tensor,
        dt: float,
        model: Autoencoder,
        config: Stage1Config,
    ) -> None:
        super().__init__(model, U.device, config)
        self.config = config
        self.dt = float(dt)
        self.n_train, self.n_t, self.n_state = U.shape
        self.U_flat = U.reshape(-1, self.n_state)
        self.neg_U_flat = -self.U_flat
        self._difference = torch.empty_like(self.U_flat)

    @classmethod
    def create(
        cls,
        U: torch.Tensor,
        dt: float,
        hidden: Sequence[int],
        latent_dim: int,
        activation: str,
        config: Stage1Config,
        seed: int,
    ) -> Stage1Trainer:
        """A trainer with a freshly initialised autoencoder (weights fixed by ``seed``)."""
        model = _seeded_module(
            lambda: Autoencoder(U.shape[-1], hidden, latent_dim, activation),
            seed,
            U.dtype,
            U.device,
        )
        return cls(U, dt, model, config)

    def loss_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        model: Autoencoder = self.model  # type: ignore[assignment]
        z = model.encode(self.U_flat)
        decoder = model.decoder
        reconstruction = linear_mse_loss(
            decoder[:-1](z), decoder[-1], self.neg_U_flat, self._difference
        )
        Z = z.view(self.n_train, self.n_t, -1)
        dZdt = time_derivative(Z, self.dt, self.config.fd_scheme)
        Xi = fit_affine(Z, dZdt)
        dynamics = nn.functional.mse_loss(library(Z) @ Xi, dZdt)
        coefficients = torch.linalg.matrix_norm(Xi).mean()
        loss = reconstruction + self.config.beta1 * dynamics + self.config.beta2 * coefficients
        return loss, torch.stack([loss, reconstruction, dynamics, coefficients])


class ResidualTrainer(FullBatchTrainer):
    """Stage k >= 2: a decoder from fixed latent trajectories to a scaled residual.

    ``Z`` [n_train, n_t, r]: stage-1 predicted latent trajectories at the training parameters;
    ``target`` [n_train, n_t, n_state]: R_{k-1} / e_{k-1}. loss = MSE(dec(Z), target).
    """

    term_names = ("loss",)

    def __init__(
        self,
        Z: torch.Tensor,
        target: torch.Tensor,
        model: ResidualDecoder,
        config: ResidualStageConfig,
    ) -> None:
        super().__init__(model, target.device, config)
        self.config = config
        self.Z_flat = Z.reshape(-1, Z.shape[-1]).detach()
        self.neg_target_flat = -target.reshape(-1, target.shape[-1])
        self._difference = torch.empty_like(self.neg_target_flat)

    @classmethod
    def create(
        cls, Z: torch.Tensor, target: torch.Tensor, config: ResidualStageConfig, seed: int
    ) -> ResidualTrainer:
        """A trainer with a freshly initialised residual decoder (weights fixed by ``seed``)."""
        model = _seeded_module(
            lambda: ResidualDecoder(
                Z.shape[-1],
                config.hidden,
                target.shape[-1],
                kappa=config.kappa,
                activation=config.activation,
            ),
            seed,
            target.dtype,
            target.device,
        )
        return cls(Z, target, model, config)

    def loss_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = self.model
        loss = linear_mse_loss(
            decoder[:-1](self.Z_flat), decoder[-1], self.neg_target_flat, self._difference
        )
        return loss, loss.reshape(1)
