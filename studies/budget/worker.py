"""One trial, trained step by step in a long-lived worker (a Ray actor, or in-process)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from studies.budget.space import Candidate, SearchSetup, rom_config
from studies.budget.validation import SearchData
from studies.spec import StudySpec


def _evaluate_max(rom: Any, params: np.ndarray, truth: np.ndarray) -> float:
    from mlasdi.rom import evaluate

    errors = evaluate(rom, params, truth)
    value = float(errors[-1].max())
    return value if math.isfinite(value) else math.inf


class TrialWorker:
    """Trains candidates one at a time, stopping at each report step (the composition of
    ``fit_rom``). One worker (a Ray actor) serves many trials: :meth:`start` sets the candidate,
    :meth:`advance` trains to the next step and returns ``{"step", "value", "done",
    "train_time_s", "status", "message"}``; ``value`` is the validation err_max of the model so
    far (stage-1 ROM, or stage 1 plus the residual stages trained up to the step). A divergence
    ends the trial with ``value = inf`` and status ``diverged``.
    """

    def __init__(
        self,
        spec: StudySpec,
        setup: SearchSetup,
        data: SearchData,
        threads: int = 1,
        device: str = "auto",
    ) -> None:
        import torch

        from mlasdi.rom import resolve_device

        torch.set_num_threads(max(1, threads))
        self.spec, self.setup, self.data = spec, setup, data
        # ``auto``: where the driver reserved a GPU for this worker (a Ray actor with num_gpus),
        # Ray exposes only that GPU: train there, as a study trial does.
        self.device = resolve_device(device)
        self._run: Iterator[dict[str, Any]] | None = None

    def start(self, cand: Candidate) -> None:
        """Begin a new trial (an unfinished one is dropped: that is how a pruned trial ends)."""
        self._run = self._stages(cand)

    def advance(self) -> dict[str, Any]:
        from mlasdi.train import DivergenceError

        if self._run is None:
            raise RuntimeError("advance() before start()")
        try:
            return next(self._run)
        except DivergenceError as exc:
            return {
                "step": self.setup.budget,
                "value": math.inf,
                "done": True,
                "train_time_s": math.nan,
                "status": "diverged",
                "message": str(exc),
            }

    def _stages(self, cand: Candidate) -> Iterator[dict[str, Any]]:
        from mlasdi.rom import (
            freeze,
            residual_stage_data,
            residual_stage_seed,
            stage1_rom,
            stage1_trainer,
            torch_dtype,
        )
        from mlasdi.train import ResidualTrainer
        from studies.trial import shared_tensor

        d, setup = self.data, self.setup
        config = rom_config(self.spec, setup, cand)
        U = shared_tensor(d.U_fit, self.device, torch_dtype(config.dtype))
        steps = setup.steps
        trainer = stage1_trainer(U, d.params_fit, d.times, config)
        overhead = 0.0  # time of ROM assembly counted as training (stage1_rom, residual data)

        def report(step: int, rom: Any, train_s: float) -> dict[str, Any]:
            value = _evaluate_max(rom, d.params_val, d.truth_val)
            done = step >= setup.budget
            status = "ok" if math.isfinite(value) else "diverged"
            return {
                "step": step,
                "value": value,
                "done": done or status != "ok",
                "train_time_s": train_s,
                "status": status,
                "message": "" if status == "ok" else "validation error is not finite",
            }

        s1 = config.stage1.iters
        rom = None
        for step in [s for s in steps if s <= s1] + ([s1] if s1 not in steps else []):
            trainer.train(step)
            start = time.perf_counter()
            rom = stage1_rom(trainer.selected()[1], U, d.params_fit, d.times, config)
            if step == s1:
                overhead += time.perf_counter() - start
            if step in steps:
                out = report(step, rom, trainer.elapsed_s + overhead)
                yield out
                if out["done"]:
                    return
        assert rom is not None
        offset, elapsed = s1, trainer.elapsed_s
        for k, stage in enumerate(config.residual_stages, start=2):
            start = time.perf_counter()
            Z, target, scale = residual_stage_data(rom, U, d.params_fit)
            overhead += time.perf_counter() - start
            residual = ResidualTrainer.create(
                Z, target, stage, seed=residual_stage_seed(config.seed, k)
            )
            end = offset + stage.iters
            for step in [s for s in steps if offset < s <= end]:
                residual.train(step - offset)
                partial = rom.with_stage(freeze(copy.deepcopy(residual.model)), scale)
                out = report(step, partial, elapsed + residual.elapsed_s + overhead)
                yield out
                if out["done"]:
                    return
            residual.train(stage.iters)
            rom = rom.with_stage(freeze(residual.model), scale)  # type: ignore[arg-type]
            offset, elapsed = end, elapsed + residual.elapsed_s
