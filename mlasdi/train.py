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
from typing import Any

import torch
from torch import nn
from torch.optim.adam import adam

from mlasdi import cuda_graphs
from mlasdi.config import ResidualStageConfig, Stage1Config
from mlasdi.dynamics import latent_penalty_gradient
from mlasdi.nn import Autoencoder, ResidualDecoder, activation_backward

# dtype of the latent least-squares fit and its gradient in stage 1 (see Stage1Trainer.gradients)
LATENT_FIT_DTYPE = torch.float64
COSINE_FLOOR = 1e-2  # a cosine schedule ends at this fraction of the initial learning rate
# Version of FullBatchTrainer.state_dict. The optimiser's moments are flat vectors in the order of
# flatten_parameters, so a state saved with another layout would load without error into the
# wrong parameters. 1: torch.optim.Adam, parameters in module order; 2: FlatAdam, output layer
# as a [W, b] block; 3: the autoencoder's standardisation buffers in the model state; 4: the
# best checkpoint of a stage 1 that selects one (``selector``); 5: stage 1's latent fit in
# float64 (a state saved before would continue with other numbers than it was trained with);
# 6: a residual stage's held-out selector (mlasdi_val) in its trainer's state, not beside it;
# 7: stage 1's selector with the GP hyperparameters its next checkpoint's fit starts from.
TRAINER_STATE_FORMAT = 7
# Ridge of the exact output-layer solve, relative to the mean diagonal of the features' Gram
# matrix: far below float32 resolution, it only keeps the solve defined for collinear features.
LSTSQ_RIDGE = 1e-10


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


class BestCheckpoint:
    """The checkpoint of a training run with the lowest :meth:`error`, among the multiples of
    ``every`` and the iteration a model is asked for (earliest on ties).

    The grid does not depend on the budget, so the model chosen at a budget is the one a run
    trained only to that budget chooses. Pass :meth:`checkpoints` and :meth:`observe` to
    ``trainer.train``, then :meth:`best_at` with the live model. Only the best grid checkpoint is
    kept (one state dict), so memory does not grow with the number of checkpoints. Subclasses
    define :meth:`error`.
    """

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = int(every)
        self.best: tuple[int, float, dict[str, torch.Tensor]] | None = None

    def error(self, model: nn.Module) -> float:
        """The score of ``model`` (lower is better)."""
        raise NotImplementedError

    def checkpoints(self, start: int, until: int) -> list[int]:
        """The grid iterations in (``start``, ``until``]."""
        first = (start // self.every + 1) * self.every
        return list(range(first, until + 1, self.every))

    def score(self, model: nn.Module) -> float:
        """:meth:`error`, with NaN read as +inf: a NaN never compares, so a NaN score could
        otherwise stay the best for good."""
        err = float(self.error(model))
        return math.inf if math.isnan(err) else err

    def observe(self, report: CheckpointReport) -> None:
        """Trainer callback at a grid iteration: remember the checkpoint if it is the best."""
        err = self.score(report.model)
        if self.best is None or err < self.best[1]:
            self.best = (report.iteration, err, copy.deepcopy(report.model.state_dict()))

    def best_at(
        self, iteration: int, model: nn.Module
    ) -> tuple[int, float, dict[str, torch.Tensor]]:
        """(iteration, error, state dict) of the best checkpoint for the budget ``iteration``,
        the live ``model`` standing there (every grid checkpoint up to it has been observed)."""
        candidates = [] if self.best is None else [self.best]
        if self.best is None or self.best[0] != iteration:
            candidates.append((iteration, self.score(model), None))
        stop, err, state = min(candidates, key=lambda c: (c[1], c[0]))
        if state is None:
            state = copy.deepcopy(model.state_dict())
        return stop, err, state

    def state_dict(self) -> dict[str, Any]:
        """The best checkpoint so far (to resume exactly); a snapshot."""
        if self.best is None:
            return {}
        iteration, err, state = self.best
        return {"iteration": iteration, "err": err, "model": copy.deepcopy(state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = (
            None
            if not state
            else (int(state["iteration"]), float(state["err"]), copy.deepcopy(state["model"]))
        )


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


class LayerPass:
    """Forward and backward pass of an MLP's layers over one full batch, written out by hand.

    For the small networks mLaSDI wins with, autograd's bookkeeping (graph nodes, transposes,
    gradient accumulation, a fresh gradient tensor per parameter) costs as much as the arithmetic.
    A full-batch step runs the same layers in the same order every time, so the backward pass is
    spelled out here, with the kernels autograd would run, and parameter gradients are written
    into ``.grad`` buffers allocated once. ``layers``: Linear modules, each optionally followed
    by an activation module (as in :class:`mlasdi.nn.MLP`).
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.layers: list[tuple[nn.Linear, nn.Module | None]] = []
        for module in layers:
            if isinstance(module, nn.Linear):
                self.layers.append((module, None))
            elif self.layers and self.layers[-1][1] is None:
                self.layers[-1] = (self.layers[-1][0], module)
            else:
                raise ValueError(
                    "expected Linear layers each followed by at most one activation, "
                    f"got {module!r} out of place"
                )
        for linear, _ in self.layers:
            _allocate_grads(linear)
        self._saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layers applied to ``x`` [N, n_in]; keeps what :meth:`backward` needs."""
        self._saved = []
        for linear, activation in self.layers:
            pre = torch.addmm(linear.bias, x, linear.weight.T)
            out = activation(pre) if activation is not None else pre
            self._saved.append((x, pre, out))
            x = out
        return x

    def backward(self, grad: torch.Tensor, *, input_grad: bool) -> torch.Tensor | None:
        """Write the parameter gradients for ``grad`` = dL/d(output of :meth:`forward`) and
        return dL/d(input) if ``input_grad``."""
        for i in reversed(range(len(self.layers))):
            linear, activation = self.layers[i]
            x, pre, out = self._saved[i]
            if activation is not None:
                grad = activation_backward(activation, grad, pre, out)
            torch.mm(grad.T, x, out=linear.weight.grad)
            torch.sum(grad, 0, out=linear.bias.grad)
            if i > 0 or input_grad:
                grad = grad @ linear.weight
        self._saved = []
        return grad if input_grad else None


def _allocate_grads(module: nn.Module) -> None:
    for p in module.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def flatten_parameters(
    module: nn.Module, bias_columns: Sequence[nn.Linear] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat, flat_grad): one tensor holding all of ``module``'s parameters, and one for their
    gradients; the parameters and their ``.grad`` buffers become views into them.

    An optimiser stepping the flat tensor updates the module in place, with one kernel launch
    and no per-tensor Python work: for the small mLaSDI networks Adam's per-tensor bookkeeping
    cost more than its arithmetic. Adam is elementwise, so this equals stepping the tensors one
    by one up to rounding (torch's CPU kernel runs the last size mod 16 elements through scalar
    code). Each layer in ``bias_columns`` keeps its weight and bias together as one
    [out, in + 1] block, the bias as the last column (see :func:`bias_column_block`).
    """
    joint = {id(layer.weight): layer for layer in bias_columns}
    biases = {id(layer.bias) for layer in bias_columns}
    params = [p for p in module.parameters() if id(p) not in biases]
    sizes = [p.numel() + (p.shape[0] if id(p) in joint else 0) for p in params]
    flat = torch.empty(sum(sizes), dtype=params[0].dtype, device=params[0].device)
    flat_grad = torch.zeros_like(flat)
    offset = 0
    for p, n in zip(params, sizes, strict=True):
        values, grads = flat[offset : offset + n], flat_grad[offset : offset + n]
        offset += n
        if id(p) not in joint:
            values.copy_(p.detach().reshape(-1))
            p.data, p.grad = values.view_as(p), grads.view_as(p)
            continue
        bias = joint[id(p)].bias
        block = values.view(p.shape[0], p.shape[1] + 1)
        grad_block = grads.view_as(block)
        block[:, :-1] = p.detach()
        block[:, -1] = bias.detach()
        p.data, p.grad = block[:, :-1], grad_block[:, :-1]
        bias.data, bias.grad = block[:, -1], grad_block[:, -1]
    return flat, flat_grad


def bias_column_block(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """([W, b] as one [out, in + 1] tensor, its gradient) for a layer flattened with
    ``bias_columns`` (:func:`flatten_parameters`): views, so writing the gradient block writes
    the layer's ``.grad`` buffers."""
    n_out, n_in = layer.weight.shape

    def block(weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        if (
            weight is None
            or bias is None
            or weight.stride() != (n_in + 1, 1)
            or bias.stride() != (n_in + 1,)
            or bias.data_ptr() != weight.data_ptr() + n_in * weight.element_size()
        ):
            raise ValueError(f"{layer!r} was not flattened with its bias as a column")
        return weight.as_strided((n_out, n_in + 1), (n_in + 1, 1))

    return block(layer.weight, layer.bias), block(layer.weight.grad, layer.bias.grad)


class OutputLayerMSE:
    """mean((h W^T + b - Y)^2) for the output layer ``layer`` of a decoder, and its gradients.

    The output layer maps [N, k] to [N, n_state] with n_state >> k; written naively the [N,
    n_state] tensor is streamed about a dozen times (bias broadcast, GEMM, subtraction, squared
    sum, gradient fill, gradient, bias-gradient sum). Here one GEMM writes the difference
    d = h W^T + b - Y straight into a persistent buffer (-Y is the accumulator and the bias rides
    along as an extra input column of ones; a fresh [N, n_state] tensor per step costs more in
    page faults than the GEMM on CPU), a dot product reads it once, and the two backward GEMMs
    read it once each and apply the 2/N gradient scale as they write. The layer must have been
    flattened with its bias as a column (:func:`flatten_parameters`): [W, b] and its gradient
    are then single tensors that the GEMMs read and write in place.

    ``solve``: every forward first sets [W, b] to the least-squares fit of the target on [h, 1]
    (variable projection: the loss is then minimal over the output layer, and dL/dh at that
    minimum is the exact gradient of the reduced loss). Its gradient block stays zero, so Adam
    leaves it exactly where the solve put it.
    """

    def __init__(self, layer: nn.Linear, target: torch.Tensor, *, solve: bool = False) -> None:
        self.solve = solve
        self.weight_bias, self.grad_weight_bias = bias_column_block(layer)
        self.neg_target = -target
        self.difference = torch.empty_like(self.neg_target)
        # [h, 1]: h is copied in by each forward, the column of ones stays.
        self.h1 = torch.ones(
            target.shape[0], layer.in_features + 1, dtype=target.dtype, device=target.device
        )
        self.grad_h = torch.empty_like(self.h1[:, :-1])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.h1[:, :-1] = h
        if self.solve:
            self.weight_bias.copy_(least_squares(self.h1, self.neg_target).T.neg_())
        d = torch.addmm(self.neg_target, self.h1, self.weight_bias.T, out=self.difference)
        return torch.dot(d.view(-1), d.view(-1)) / d.numel()

    def backward(self) -> torch.Tensor:
        """Write the layer's gradients; return dL/dh (for the ``h`` of the last forward)."""
        d = self.difference
        scale = 2.0 / d.numel()
        if not self.solve:
            g = self.grad_weight_bias
            torch.addmm(g, d.T, self.h1, beta=0.0, alpha=scale, out=g)
        return torch.addmm(
            self.grad_h, d, self.weight_bias[:, :-1], beta=0.0, alpha=scale, out=self.grad_h
        )


def least_squares(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """argmin_X ||features X - target||_F^2 + lam ||X||_F^2: [k, n_out] for ``features`` [N, k],
    ``target`` [N, n_out], with lam = :data:`LSTSQ_RIDGE` times the mean diagonal of the Gram
    matrix, by the normal equations in float64 (k is a hidden width, small; forming
    features^T target costs one GEMM, like the gradient it replaces). Returned in the target's
    dtype."""
    f64 = features.double()
    gram = f64.T @ f64
    gram.diagonal().add_(LSTSQ_RIDGE * gram.diagonal().mean())
    # The explicit inverse of the small Gram matrix and one GEMM: cheaper on CPU than a
    # triangular solve with n_out right-hand sides. cholesky_ex, not cholesky: the latter reads
    # its error flag back to the host every call (a sync per step on CUDA, and an operation a
    # CUDA graph cannot hold). A failed factorisation (non-finite features) turns the solution
    # into NaN on the device instead, which the trainers' periodic finiteness check reports as
    # a divergence.
    factor, info = torch.linalg.cholesky_ex(gram)
    inverse = torch.cholesky_inverse(factor).masked_fill_(info.ne(0), math.nan)
    return (inverse @ (features.T @ target).double()).to(target.dtype)


class FlatAdam:
    """Adam with torch's defaults (betas 0.9, 0.999, eps 1e-8) on one flat parameter tensor.

    The same update as ``torch.optim.Adam(fused=True)``: it calls torch's functional ``adam``
    with the fused kernel on CPU and CUDA (the for-each kernel elsewhere). It skips the
    optimiser object's per-step Python work and, on first use, the 1 s import of torch's
    compiler that the optimiser object triggers. That is worth about 10 us per step on the CPU
    (``benchmarks/flat_adam.py``, one thread, medians, load 5.5 on 2 CPUs): 16 against 27 us
    at 2e4 parameters (1.6x), 118 against 129 us at 2e5 (1.1x), 222 against 240 us at 4e5
    (1.08x); none at 4e6 (0.97x), where the kernel's arithmetic dominates. ``torch.optim.adam.
    adam`` is not public API: if a torch release moves it, switching to the public optimiser
    costs only that overhead.
    """

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        self.param, self.grad = param, grad
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        # torch keeps the fused step count as a float32 tensor on the parameter's device.
        self.step_count = torch.zeros((), dtype=torch.float32, device=param.device)
        self.fused = param.device.type in ("cpu", "cuda")

    def step(self, lr: float | torch.Tensor) -> None:
        adam(
            [self.param],
            [self.grad],
            [self.exp_avg],
            [self.exp_avg_sq],
            [],
            [self.step_count],
            fused=self.fused,
            foreach=None if self.fused else True,
            amsgrad=False,
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=lr,
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The step count and both moment vectors (live tensors: copy them to keep them)."""
        return {"step": self.step_count, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.step_count.copy_(state["step"])
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])


class FullBatchTrainer:
    """Adam on a full-batch loss; subclasses define :meth:`gradients`.

    ``train(until)`` runs iterations ``self.iteration + 1 .. until``; the loss terms of every
    iteration are kept on the device (``history`` [iterations, n_terms]) and read back only at
    checkpoints and divergence checks, so the loop never waits on the host.
    """

    term_names: tuple[str, ...] = ("loss",)

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        config: Stage1Config | ResidualStageConfig,
        output_layer: nn.Linear,
    ) -> None:
        self.model = model
        self.device = device
        self.optimizer = FlatAdam(*flatten_parameters(model, bias_columns=[output_layer]))
        self.lr = config.lr
        self.lr_schedule = config.lr_schedule
        self.schedule_iters = config.iters
        self.iteration = 0
        self.elapsed_s = 0.0
        self._history: list[torch.Tensor] = []
        # Scores the checkpoints on its grid as training passes them (None: no selection).
        self.selector: BestCheckpoint | None = None
        # The step as a CUDA graph, once captured (mlasdi.cuda_graphs: off unless switched on).
        self.captured: cuda_graphs.CapturedStep | None = None

    def gradients(self) -> torch.Tensor:
        """Write the gradient of the loss into every parameter's ``.grad`` and return the loss
        terms [n_terms] (total loss first) at the current parameters."""
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
        if self.captured is not None:
            return self.captured.step(self.learning_rate(self.iteration))
        terms = self.gradients()
        self.optimizer.step(self.learning_rate(self.iteration))
        return terms

    def train(
        self,
        until: int,
        *,
        checkpoints: Sequence[int] = (),
        callback: Callback | None = None,
        divergence_check_every: int = 1000,
    ) -> None:
        """Train up to iteration ``until``, calling ``callback`` at each checkpoint (and the
        :attr:`selector`, if any, at each of its grid iterations, before the callback)."""
        if until < self.iteration:
            raise ValueError(f"cannot train back to iteration {until} from {self.iteration}")
        points = check_checkpoints(checkpoints, self.iteration, until)
        grid = [] if self.selector is None else self.selector.checkpoints(self.iteration, until)
        stops = sorted(set(points) | set(grid) | {until})
        self.model.train()
        if cuda_graphs.should_capture(self):
            cuda_graphs.capture(self)
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
                self.solve_output_layer()
            if self.selector is not None and stop in grid:
                self.selector.observe(self._report())
            self.elapsed_s += time.perf_counter() - start_time
            if stop in points and callback is not None:
                callback(self._report())

    def _report(self) -> CheckpointReport:
        return CheckpointReport(
            iteration=self.iteration,
            loss=self.last_loss(),
            elapsed_s=self.elapsed_s,
            model=self.model,
        )

    def solve_output_layer(self) -> None:
        """With ``output_layer = "lstsq"``: refit the output layer to the current features, so a
        model read at a stop is the least-squares fit for its final weights (training goes on
        the same: each step solves it afresh)."""

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
                "format": TRAINER_STATE_FORMAT,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "iteration": self.iteration,
                "elapsed_s": self.elapsed_s,
                "selector": {} if self.selector is None else self.selector.state_dict(),
            }
        )

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Continue from ``state`` (which is copied: training on does not change it)."""
        if state.get("format") != TRAINER_STATE_FORMAT:
            raise ValueError(
                f"trainer state has format {state.get('format', 1)}, expected "
                f"{TRAINER_STATE_FORMAT}: it was saved by an earlier mlasdi, whose trainer state "
                "is laid out differently; train from scratch"
            )
        state = copy.deepcopy(state)
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self.iteration = int(state["iteration"])  # type: ignore[arg-type]
        self.elapsed_s = float(state["elapsed_s"])  # type: ignore[arg-type]
        if self.selector is not None:
            self.selector.load_state_dict(state["selector"])  # type: ignore[arg-type]


def standardization(U: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(mean [n_state], std) of snapshots ``U`` [..., n_state]: the mean over every snapshot
    of each state entry and one standard deviation of the centred snapshots (computed in
    float64).

    When every snapshot is the same field the std is 1, not 0: the centred snapshots are then
    zero (up to the rounding of the mean) and stay so, where dividing them by their own rounding
    noise, or by 0, would feed the networks noise blown up to order 1, or NaN.
    """
    flat = U.reshape(-1, U.shape[-1]).double()
    mean = flat.mean(0)
    if torch.equal(flat.amin(0), flat.amax(0)):
        return mean.to(U.dtype), 1.0
    return mean.to(U.dtype), float((flat - mean).std())


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

    With ``config.select_every`` > 0 the model stage 1 keeps (:meth:`selected`) is its best
    checkpoint by :attr:`selector` (:class:`mlasdi.rom.Stage1Selector`, attached by
    :func:`mlasdi.rom.stage1_trainer`, which knows the training parameters) among every
    ``select_every``-th iteration and the current one; training itself goes on unchanged.
    """

    term_names = ("loss", "reconstruction", "dynamics", "coefficients")

    def __init__(
        self,
        U: torch.Tensor,
        dt: float,
        model: Autoencoder,
        config: Stage1Config,
    ) -> None:
        super().__init__(model, U.device, config, model.decoder[-1])
        self.config = config
        self.dt = float(dt)
        self.n_train, self.n_t, self.n_state = U.shape
        if config.standardize:
            model.standardize(*standardization(U))
        # The networks see standardised snapshots (exactly U when the model is not standardised).
        self.U_flat = ((U - model.shift) / model.scale).reshape(-1, self.n_state)
        self.encoder = LayerPass(model.encoder)
        self.decoder = LayerPass(model.decoder[:-1])
        self.output = OutputLayerMSE(
            model.decoder[-1], self.U_flat, solve=config.output_layer == "lstsq"
        )
        # beta1 and beta2 as float64 device tensors, made once: the latent gradient's weights.
        self.latent_weights = [
            torch.tensor(beta, dtype=LATENT_FIT_DTYPE, device=U.device)
            for beta in (config.beta1, config.beta2)
        ]

    def selected(self) -> tuple[int, Autoencoder]:
        """(iteration, autoencoder) that stage 1 keeps at the current iteration: the live model,
        or with ``select_every`` its best checkpoint so far (a copy, unless it is the live one).
        The grid does not depend on the budget, so this is what a run trained only to the
        current iteration keeps."""
        model: Autoencoder = self.model  # type: ignore[assignment]
        if self.selector is None:
            if self.config.select_every:
                raise ValueError(
                    "stage1.select_every needs a checkpoint selector: build the trainer with "
                    "mlasdi.rom.stage1_trainer"
                )
            return self.iteration, model
        stop, _, state = self.selector.best_at(self.iteration, model)
        if stop != self.iteration:
            model = copy.deepcopy(model)
            model.load_state_dict(state)
        return stop, model

    def grow(self, U: torch.Tensor) -> None:
        """Append training rows ``U`` [m, n_t, n_state] (snapshots at new parameters, on the
        trainer's device and dtype): the next step trains on the old rows and these, from the
        same weights and optimiser state (greedy sampling). The step's data tensors are rebuilt;
        the latent least squares and the time derivative work per row, so they take the new
        rows as they are. The model's standardisation stays the one of the first rows: the
        weights were trained on it, so the new rows are seen through it too."""
        if U.ndim != 3 or U.shape[1:] != (self.n_t, self.n_state):
            raise ValueError(
                f"new rows must have shape [m, {self.n_t}, {self.n_state}], got {list(U.shape)}"
            )
        model: Autoencoder = self.model  # type: ignore[assignment]
        new = ((U - model.shift) / model.scale).reshape(-1, self.n_state)
        self.U_flat = torch.cat([self.U_flat, new])
        self.n_train += U.shape[0]
        self.output = OutputLayerMSE(model.decoder[-1], self.U_flat, solve=self.output.solve)
        self.captured = None  # a captured step reads the old tensors: capture it again

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

    @torch.no_grad()
    def gradients(self) -> torch.Tensor:
        z = self.encoder.forward(self.U_flat)
        reconstruction = self.output.forward(self.decoder.forward(z))
        grad_z = self.decoder.backward(self.output.backward(), input_grad=True)
        # The latent fit runs in float64 whatever the networks' dtype: early in training the
        # latent trajectories barely move, the library [1, z] has a condition number of 1e8-1e9,
        # and with a float32 QR stage 1 stalls on the mean state or ends in a NaN loss
        # (GPLaSDI's Burgers example, benchmarks/burgers_gplasdi_fixes.py). The tensors are
        # [n_train, n_t, r].
        dynamics, coefficients, grad_Z = latent_penalty_gradient(
            z.view(self.n_train, self.n_t, -1).to(LATENT_FIT_DTYPE),
            self.dt,
            self.config.fd_scheme,
            *self.latent_weights,
        )
        self.encoder.backward(grad_z + grad_Z.reshape(z.shape).to(z.dtype), input_grad=False)
        dynamics, coefficients = dynamics.to(z.dtype), coefficients.to(z.dtype)
        loss = reconstruction + self.config.beta1 * dynamics + self.config.beta2 * coefficients
        return torch.stack([loss, reconstruction, dynamics, coefficients])

    @torch.no_grad()
    def solve_output_layer(self) -> None:
        if self.output.solve:
            self.output.forward(self.decoder.forward(self.encoder.forward(self.U_flat)))


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
        super().__init__(model, target.device, config, model[-1])
        self.config = config
        self.Z_flat = Z.reshape(-1, Z.shape[-1]).detach()
        self.hidden = LayerPass(model[:-1])
        self.output = OutputLayerMSE(
            model[-1], target.reshape(-1, target.shape[-1]), solve=config.output_layer == "lstsq"
        )

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

    @torch.no_grad()
    def gradients(self) -> torch.Tensor:
        loss = self.output.forward(self.hidden.forward(self.Z_flat))
        self.hidden.backward(self.output.backward(), input_grad=False)
        return loss.reshape(1)

    @torch.no_grad()
    def solve_output_layer(self) -> None:
        if self.output.solve:
            self.output.forward(self.hidden.forward(self.Z_flat))
