"""One trial, trained step by step in a long-lived worker (a Ray actor, or in-process)."""

from __future__ import annotations

import math
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
        """The candidate's stages on the stage engine, one chain stopping at every report step
        (steps count the iterations of all stages); yields a report at each and stops when it
        is the last (a pruned trial is simply never advanced again). ``train_time_s`` is the
        training time so far, model assembly at the stops included."""
        from mlasdi.engine import EngineConfig, StageEngine, TrainingSet, chain
        from mlasdi.rom import torch_dtype

        d, setup = self.data, self.setup
        config = rom_config(self.spec, setup, cand)
        engine_config = EngineConfig(self.device, torch_dtype(config.dtype))
        rows = TrainingSet(engine_config.tensor(d.U_fit), d.params_fit, d.times)
        offsets = np.cumsum([0, *config.stage_iters[:-1]])
        stops = [
            [s - offset for s in setup.steps if offset < s <= offset + iters]
            for offset, iters in zip(offsets, config.stage_iters, strict=True)
        ]
        engine = StageEngine(rows, lambda budget, branch: config, engine_config)
        for stop in engine.events(chain(config.stage_iters, stops)):
            step = int(offsets[len(stop.budget) - 1]) + stop.budget[-1]
            if step not in setup.steps:
                continue
            value = _evaluate_max(stop.rom, d.params_val, d.truth_val)
            status = "ok" if math.isfinite(value) else "diverged"
            yield {
                "step": step,
                "value": value,
                "done": step >= setup.budget or status != "ok",
                "train_time_s": float(sum(stop.stage_times_s)),
                "status": status,
                "message": "" if status == "ok" else "validation error is not finite",
            }
            if step >= setup.budget or status != "ok":
                return
