"""Benchmark: the share of stage-1 training time that the fast recipe's checkpoint selection
costs, on a reduced ``burgers1d_gplasdi`` case.

The preset's data (GPLaSDI's Burgers solver on 1001 nodes x 1001 levels, the 14 training
points, trained on every 10th level), autoencoder 1001-100-5 (sigmoid), GP kernel (RBF, length
scale in [1.4, 1000], 10 restarts), under the fast recipe, whose stage 1 scores a checkpoint
every ``select_every`` = 100 iterations on held-out training parameters
(:class:`mlasdi.rom.Stage1Selector`: a GP fit on the fit split and a prediction at the held-out
ones). Reduced: stage 1 only, ``--iters`` iterations (default 1000, a few minutes on a shared
2-core CPU; the preset trains 28,000, about 30 minutes with selection on such a machine): each
checkpoint after the first costs about the same, so the share at 28,000 iterations is projected
from the measured costs.

    python benchmarks/selection_cost.py [--iters N] [--smoke]

``--smoke`` (CI): 201 nodes, 300 iterations. Prints the training time without selection, the
selection time (and its GP-fit part): the first checkpoint's (a hyperparameter search with
``gp.n_restarts`` restarts, which every checkpoint cost before the warm start) and the later
ones' (warm-started), and the share of training that selection costs at the preset's 28,000
iterations with these costs: ``selection_share_cold=<x>`` (a search at every checkpoint) and
last ``selection_share=<x>`` (searched once, then warm-started). Both come from one run, so
they compare under the same machine load; a loaded machine slows the multi-threaded training
more than the single-threaded GP fits, so the shares are lowest there.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import torch

from mlasdi.config import RECIPES
from mlasdi.interpolation import CoefficientGP
from mlasdi.problems import burgers1d
from mlasdi.rom import stage1_trainer
from studies.spec import load_spec

PRESET_ITERS = 28_000  # burgers1d_gplasdi's largest stage-1 budget


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help="201 nodes, 300 iterations (CI)")
    args = parser.parse_args(argv)
    nx, iters = (201, 300) if args.smoke else (1001, args.iters)

    spec = load_spec("burgers1d_gplasdi")
    params = np.array(spec.data.train_params)
    settings = burgers1d.BurgersSettings(nx=nx)
    U, _ = burgers1d.integrate(burgers1d.initial_condition(params, settings.grid()), settings)
    stride = spec.data.train_time_stride
    U, times = U[:, ::stride], settings.times()[::stride]
    config = spec.rom_config(hidden=(100,), latent_dim=5, seed=0, stage_iters=(iters,))
    config = dataclasses.replace(
        config, stage1=dataclasses.replace(config.stage1, **RECIPES["fast"].stage1_options())
    )
    trainer = stage1_trainer(torch.as_tensor(U, dtype=torch.float32), params, times, config)
    selector = trainer.selector
    assert selector is not None

    spent = {"selection": 0.0, "gp_fit": 0.0}
    checkpoint_s: list[float] = []
    observe, fit = selector.observe, CoefficientGP.fit

    def timed_observe(report):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        observe(report)
        checkpoint_s.append(time.perf_counter() - start)

    def timed_fit(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        start = time.perf_counter()
        out = fit(self, *a, **k)
        spent["gp_fit"] += time.perf_counter() - start
        return out

    selector.observe = timed_observe  # type: ignore[method-assign]
    CoefficientGP.fit = timed_fit  # type: ignore[method-assign]
    trainer.train(iters)
    CoefficientGP.fit = fit  # type: ignore[method-assign]

    every = config.stage1.select_every
    selection = sum(checkpoint_s)
    train_s = trainer.elapsed_s - selection
    block = train_s * every / iters  # training time between two checkpoints
    first, later = checkpoint_s[0], float(np.median(checkpoint_s[1:]))
    n_preset = PRESET_ITERS // every
    print(
        f"burgers1d_gplasdi reduced: {nx} nodes, {U.shape[0]} x {U.shape[1]} training snapshots, "
        f"stage 1 {iters} iterations, {len(checkpoint_s)} selection checkpoints; "
        f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"training without selection {train_s:.1f} s ({block:.2f} s per {every} iterations)")
    print(
        f"selection {selection:.1f} s (GP fits {spent['gp_fit']:.1f} s): first checkpoint "
        f"{first:.2f} s (hyperparameter search with restarts, what every checkpoint cost "
        f"before the warm start), later ones {later:.2f} s (median); best checkpoint "
        f"{selector.best[0]}"
    )
    print(f"selection share of training here: {selection / train_s:.4f}")
    print(
        f"at the preset's {PRESET_ITERS} iterations ({n_preset} checkpoints, same costs): "
        f"searching at every checkpoint {first / block:.4f}, warm-started "
        f"{(first + (n_preset - 1) * later) / (n_preset * block):.4f}"
    )
    print(f"selection_share_cold={first / block:.4f}")
    print(f"selection_share={(first + (n_preset - 1) * later) / (n_preset * block):.4f}")


if __name__ == "__main__":
    main()
