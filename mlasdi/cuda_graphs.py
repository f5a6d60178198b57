"""CUDA-graph capture of a full-batch training step (stage 1 and residual stages).

A full-batch step of :class:`mlasdi.train.FullBatchTrainer` runs the same kernels on the same
tensors every iteration (static shapes, persistent parameter, gradient, optimiser and loss
buffers), so it can be recorded once as a CUDA graph and replayed: one launch per iteration instead
of a few dozen, each of which costs Python and driver time comparable to the small networks'
arithmetic on a GPU.

Switch: the environment variable ``MLASDI_CUDA_GRAPHS``. ``0`` or unset (the default): never
capture. ``1``: trainers on a CUDA device capture their step the first time they train; on the CPU
the setting has no effect. It is off by default until it has been measured on a GPU
(``benchmarks/gpu_check.py`` times both; docs/gpu.md).

What is the same and what is not: with a ``constant`` learning rate the replayed step runs the
kernels of the uncaptured step with the same arguments, so training is bit-for-bit the same. A
``cosine`` schedule changes the rate every step, so it is a float32 device tensor, filled before
each replay and read by torch's fused Adam kernel: the rate is rounded to float32 (a relative
change below 6e-8), and the step is bit-for-bit the uncaptured step at that rounded rate. The
finiteness check every N iterations stays outside the graph (it reads the loss on the host).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mlasdi.train import FlatAdam, FullBatchTrainer

ENV_SWITCH = "MLASDI_CUDA_GRAPHS"
WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS/cuSOLVER handles, caches)


class CaptureError(RuntimeError):
    """A training step cannot be captured as a CUDA graph (wrong device, or capture failed)."""


def enabled() -> bool:
    """Whether ``MLASDI_CUDA_GRAPHS`` asks for capture (``1``); ``0`` or unset: no."""
    value = os.environ.get(ENV_SWITCH, "0").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_SWITCH} must be 0 or 1, got {value!r}")
    return value == "1"


@contextlib.contextmanager
def state_restored(optimizer: FlatAdam) -> Iterator[None]:
    """Steps taken inside leave the parameters and the optimiser's state (moments, step count)
    as they were on entry: the rest of a trainer's step buffers are overwritten every step."""
    state = [optimizer.param, *optimizer.state_dict().values()]
    saved = [t.clone() for t in state]
    try:
        yield
    finally:
        for live, copy in zip(state, saved, strict=True):
            live.copy_(copy)


class CapturedStep:
    """``trainer.gradients()`` and the Adam update, recorded as one CUDA graph.

    Capturing needs a few eager warm-up steps (torch requires them, on a side stream, so that
    lazily created handles, workspaces and cached operators exist before the capture); they run
    on the trainer's tensors, whose parameters and optimiser state are restored afterwards, so
    capturing changes nothing: the next :meth:`step` is the trainer's next iteration. Loading a
    state into the trainer later copies into the same tensors, which the graph keeps using.
    """

    def __init__(self, trainer: FullBatchTrainer, *, warmup: int = WARMUP_STEPS) -> None:
        device = trainer.device
        if device.type != "cuda":
            raise CaptureError(
                f"CUDA graph capture needs a CUDA device; this trainer is on {device}"
            )
        optimizer = trainer.optimizer
        constant = trainer.lr_schedule == "constant"
        # A constant rate is baked into the graph as the kernel's float argument (exact); a
        # schedule needs a tensor the graph reads, which torch's fused Adam takes as float32.
        self.lr = (
            None
            if constant
            else torch.tensor(
                trainer.learning_rate(trainer.iteration), dtype=torch.float32, device=device
            )
        )
        lr = trainer.lr if self.lr is None else self.lr
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        try:
            with state_restored(optimizer):
                with torch.cuda.stream(side):
                    for _ in range(warmup):
                        trainer.gradients()
                        optimizer.step(lr)
                torch.cuda.current_stream(device).wait_stream(side)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.terms = trainer.gradients()
                    optimizer.step(lr)
        except RuntimeError as error:
            raise CaptureError(
                f"CUDA graph capture of the {type(trainer).__name__} step failed ({error}); "
                f"unset {ENV_SWITCH} to train without it"
            ) from error

    def step(self, lr: float) -> torch.Tensor:
        """Replay one iteration at learning rate ``lr``; returns its loss terms (a fresh tensor,
        since the graph overwrites its output every replay)."""
        if self.lr is not None:
            self.lr.fill_(lr)
        self.graph.replay()
        return self.terms.clone()


def capture(trainer: FullBatchTrainer) -> None:
    """Capture ``trainer``'s step now: its later iterations replay the graph."""
    trainer.captured = CapturedStep(trainer)


def should_capture(trainer: FullBatchTrainer) -> bool:
    """The switch is on, the trainer is on CUDA and has not captured yet."""
    return trainer.captured is None and trainer.device.type == "cuda" and enabled()
