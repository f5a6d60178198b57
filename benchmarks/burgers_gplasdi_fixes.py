"""The two changes GPLaSDI's Burgers example needed on our harness, measured on its own data.

Trains the GPLaSDI model of the ``burgers1d_gplasdi`` preset (1001-100-5 sigmoid, the paper
recipe, its 14 training points, every 10th of the 1001 levels) and reports, at each of
``--checkpoints``:

- ``latent_fit``: stage 1 for ``--float32-iters`` iterations with its latent least squares in
  float32 (as before the change) and in float64, on the training rows in the preset's order and
  sorted (only the floating-point summation order differs): a NaN loss (its iteration,
  ``nan_at_<dtype>_<order>=``) or the final reconstruction loss.
- ``kernel``: the same trained autoencoder with the GP of ``[training] gp`` of the preset (GPLaSDI's
  RBF with its length-scale floor) and with our default (Matern 1.5, free length scale): the test
  errors over every test parameter and all 1001 levels (max / mean / median / min of r(mu)).

    python benchmarks/burgers_gplasdi_fixes.py [--checkpoints 14000,28000]
    python benchmarks/burgers_gplasdi_fixes.py --smoke        # the preset's smoke data (CI)

The data file is the preset's (``data/burgers1d_1001x1001_21x21.h5`` under the current
directory, generated when absent: ``mlasdi data burgers1d``; the smoke data go to a temporary
directory). Last lines are ``name=value``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mlasdi import train as train_module
from mlasdi.config import GPConfig
from mlasdi.rom import stage1_rom, stage1_trainer
from mlasdi.study_data import load_study_data
from mlasdi.train import DivergenceError
from studies.spec import load_spec, smoke_spec


def _summary(r: np.ndarray) -> str:
    return " / ".join(f"{100 * x:.2f} %" for x in (r.max(), r.mean(), np.median(r), r.min()))


def latent_fit_runs(U: torch.Tensor, data, config, iters: int) -> list[tuple[str, str, str]]:
    """(row order, latent-fit dtype, outcome) of stage 1 trained ``iters`` iterations with the
    latent fit in float32 and in float64, on the training rows in the preset's order and sorted
    (the same data and loss; only the floating-point summation order differs). The outcome is
    the iteration of a NaN loss or the final reconstruction loss."""
    saved = train_module.LATENT_FIT_DTYPE
    order = np.lexsort(data.params_train.T[::-1])  # by the first parameter, then the next
    runs = []
    try:
        for name, rows in (("preset", np.arange(len(order))), ("sorted", order)):
            for dtype in (torch.float32, torch.float64):
                train_module.LATENT_FIT_DTYPE = dtype
                trainer = stage1_trainer(U[rows], data.params_train[rows], data.times, config)
                try:
                    trainer.train(iters)
                    outcome = f"reconstruction {trainer.last_loss()['reconstruction']:.2e}"
                except DivergenceError:
                    outcome = f"NaN loss at iteration {trainer.iteration}"
                runs.append((name, str(dtype).removeprefix("torch."), outcome))
    finally:
        train_module.LATENT_FIT_DTYPE = saved
    return runs


def main(argv: list[str] | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="mlasdi-burgers-fixes-") as tmp:
        return run(argv, Path(tmp))


def run(argv: list[str] | None, tmp: Path) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default="14000,28000", help="stage-1 iterations")
    parser.add_argument("--float32-iters", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="the preset's smoke data (CI)")
    args = parser.parse_args(argv)
    spec = load_spec("burgers1d_gplasdi")
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    if args.smoke:
        spec = smoke_spec(spec)
        spec = dataclasses.replace(
            spec, data=dataclasses.replace(spec.data, file=str(tmp / "smoke.h5"))
        )
        checkpoints, args.float32_iters = [20, 40], 20
    torch.manual_seed(0)
    start = time.perf_counter()
    data = load_study_data(spec.data, progress=False)
    print(
        f"data: {data.U_train.shape[0]} training points x {data.U_train.shape[1]} snapshots; "
        f"{len(data.params_test)} test points x {len(data.times_test)} levels "
        f"({time.perf_counter() - start:.1f} s)"
    )
    gplasdi = spec.method("gplasdi")
    config = spec.rom_config(
        hidden=gplasdi.hidden[0],
        latent_dim=gplasdi.latent_dims[0],
        seed=spec.seeds[0],
        stage_iters=(max(checkpoints),),
        method="gplasdi",
    )
    U = torch.as_tensor(data.U_train)
    lines = []
    for order, dtype, outcome in latent_fit_runs(U, data, config, args.float32_iters):
        print(f"latent fit in {dtype}, rows in {order} order, {args.float32_iters} its: {outcome}")
        if outcome.startswith("NaN"):
            lines.append(f"nan_at_{dtype}_{order}={outcome.split()[-1]}")
    kernels = {"preset": config.gp, "matern_free": GPConfig(n_restarts=config.gp.n_restarts)}
    print(f"preset kernel: {config.gp}")
    trainer = stage1_trainer(U, data.params_train, data.times, config)
    for it in checkpoints:
        begin = time.perf_counter()
        trainer.train(it)
        print(
            f"stage 1 to {it} iterations (float64 latent fit): {time.perf_counter() - begin:.0f} s"
        )
        for name, gp in kernels.items():
            rom = stage1_rom(
                trainer.selected()[1],
                U,
                data.params_train,
                data.times,
                dataclasses.replace(config, gp=gp),
            )
            r = data.test_errors(rom, spec.run.eval_batch_size)[-1].max(-1)
            print(f"  {name:12s} r(mu) max / mean / median / min: {_summary(r)}")
            lines.append(f"err_max_{name}_{it}={r.max():.4g}")
            lines.append(f"err_mean_{name}_{it}={r.mean():.4g}")
    print(*lines, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
