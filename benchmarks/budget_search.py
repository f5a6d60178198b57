"""Does the Optuna budget search beat the hand-picked stage splits at the same total budget?

1. Run ``mlasdi-study budget`` (>= 24 trials) on ``vlasov_quick`` at its largest mLaSDI total
   budget (2000 iterations: the preset's (1000, 1000) split), first architecture and latent size.
   The objective is err_max on validation points held out of the training set.
2. Retrain the best configuration found on the FULL training set and evaluate err_max over every
   test parameter (the study's ``err_max``).
3. Do the same for the preset's hand-picked mLaSDI split(s) at that total (kappa and residual
   widths of the preset), same architecture, latent size and seed; and, as a second reference,
   the paper's four splits (25k+25k, 25k+50k, 50k+50k, 75k+25k) rescaled to the same total.
   An ablation row ("split only") trains the found split with the preset's kappa and widths, to
   tell how much of the gain is the split itself.

The last line is ``budget_search_test_errmax_ratio=<best found / best hand-picked of the preset>``
(< 1: the search found a better split).

    python benchmarks/budget_search.py                 # the measurement (~10-20 min on 2 cores)
    python benchmarks/budget_search.py --smoke-test    # seconds, smoke preset, no Ray
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from mlasdi.data import SnapshotSet
from mlasdi.fit import fit_rom
from mlasdi.study_data import load_study_data
from mlasdi.train import DivergenceError
from studies import budget as B
from studies.spec import load_spec

PAPER_SPLITS = ((25_000, 25_000), (25_000, 50_000), (50_000, 50_000), (75_000, 25_000))


def test_errmax(spec, setup, cand, data) -> tuple[float, float, float]:
    """(err_max over every test parameter, over the test parameters that are not training points,
    training time s) of ``cand`` trained on all training points."""
    config = B.rom_config(spec, setup, cand)
    train = SnapshotSet(
        params=data.params_train,
        times=data.times,
        snapshots=data.U_train,
        param_names=tuple(f"mu_{i}" for i in range(data.params_train.shape[1])),
    )
    try:
        fit = fit_rom(train, config, device="cpu")
        errors = data.test_errors(fit.rom, batch_size=64)
    except DivergenceError:
        return math.inf, math.inf, math.nan
    r = errors[-1].max(-1)
    r = np.where(np.isfinite(r), r, math.inf)
    return float(r.max()), float(r[~data.is_train].max()), float(sum(fit.stage_times_s))


def validation_errmax(spec, setup, cand, search_data) -> float:
    """What the search's objective says about ``cand`` (validation err_max)."""
    worker = B.TrialWorker(spec, setup, search_data)
    worker.start(cand)
    while True:
        r = worker.advance()
        if r["done"]:
            return r["value"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="vlasov_quick")
    p.add_argument("--budget", type=int, default=None, help="default: largest mLaSDI total")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--out", default="results/budget_search_vlasov_quick")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    p.add_argument("--smoke-test", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    if args.smoke_test:
        spec = load_spec("smoke")
        args.budget, args.trials = args.budget or 400, min(args.trials, 3)
        args.out = args.out if args.out != p.get_default("out") else "/tmp/budget_search_smoke"
    else:
        spec = load_spec(args.spec)
    mlasdi = spec.method("mlasdi")
    budget = args.budget or max(sum(b) for b in mlasdi.budgets)
    preset = [tuple(b) for b in mlasdi.budgets if sum(b) == budget]
    if not preset:  # e.g. the smoke preset: its splits rescaled to the budget
        preset = sorted(
            {
                (s1, budget - s1)
                for s1 in (round(budget * b[0] / sum(b) / 100) * 100 for b in mlasdi.budgets)
            }
        )

    wall0 = time.perf_counter()
    summary = B.run_search(
        spec,
        budget,
        n_trials=args.trials,
        out=args.out,
        sampler_seed=args.seed,
        num_cpus=args.num_cpus,
        use_ray=not args.smoke_test,
    )
    search_wall = time.perf_counter() - wall0
    if summary["best"] is None:
        print("the search found no completed trial", file=sys.stderr)
        return 1
    setup = B.SearchSetup(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in summary["setup"].items()}
    )
    best = B.candidate_of(setup, summary["best"]["params"])

    data = load_study_data(spec.data, progress=False)
    sdata, _ = B.search_data(spec, 0.2, setup.seed)
    width = setup.mirrored() if mlasdi.residual_hidden == "mirror" else mlasdi.residual_hidden
    kappa = mlasdi.residual_kappa

    rows = []
    t0 = time.perf_counter()
    rows.append(
        ("search best", best, *test_errmax(spec, setup, best, data), summary["best"]["values"][0])
    )
    for split in preset:
        cand = B.Candidate(split, kappa, tuple(width))
        rows.append(
            (
                "preset",
                cand,
                *test_errmax(spec, setup, cand, data),
                validation_errmax(spec, setup, cand, sdata),
            )
        )
    if best.n_stages > 1:  # ablation: the found split with the preset's kappa and widths
        cand = B.Candidate(best.stage_iters, kappa, tuple(width))
        if cand != best:
            rows.append(
                (
                    "split only",
                    cand,
                    *test_errmax(spec, setup, cand, data),
                    validation_errmax(spec, setup, cand, sdata),
                )
            )
    for split in PAPER_SPLITS:
        s1 = B.round_to(budget * split[0] / sum(split), setup.min_stage)
        cand = B.Candidate((s1, budget - s1), kappa, tuple(width))
        if any(r[1] == cand for r in rows):
            continue
        rows.append(
            (
                "paper ratio",
                cand,
                *test_errmax(spec, setup, cand, data),
                validation_errmax(spec, setup, cand, sdata),
            )
        )
    retrain_wall = time.perf_counter() - t0

    print()
    print(
        f"{spec.name}: budget {budget} iterations, stage-1 hidden {list(setup.hidden)}, latent "
        f"{setup.latent_dim}, seed {setup.seed}; validation = {len(setup.val_index)} of "
        f"{data.params_train.shape[0]} training points; test = {data.params_test.shape[0]} points"
    )
    print(
        f"{'source':<12} {'stages':<18} {'kappa':>7} {'residual':<10} {'val err_max':>11} {'test err_max':>12} {'unseen':>8} {'train s':>8}"
    )
    for source, cand, err, unseen, train_s, val in rows:
        print(
            f"{source:<12} {str(list(cand.stage_iters)):<18} {cand.kappa:>7.3g} "
            f"{'-'.join(map(str, cand.residual_hidden)):<10} {val:>11.4g} {err:>12.4g} {unseen:>8.4g} {train_s:>8.1f}"
        )
    found = rows[0][2]
    hand = min(r[2] for r in rows if r[0] == "preset")
    hand_all = min(r[2] for r in rows if r[0] in ("preset", "paper ratio"))
    states = ", ".join(f"{k} {v}" for k, v in sorted(summary["states"].items()))
    print(
        f"search: {summary['n_trials']} trials ({states}), wall {search_wall:.0f} s; retraining and test evaluation {retrain_wall:.0f} s"
    )
    print(
        f"best found test err_max {found:.4g} vs best preset split {hand:.4g}: "
        f"{(1 - found / hand) * 100:.1f} % lower"
        if found <= hand
        else f"best found test err_max {found:.4g} vs best preset split {hand:.4g}: "
        f"{(found / hand - 1) * 100:.1f} % higher"
    )
    print(
        f"vs the best of preset + paper-ratio splits ({hand_all:.4g}): ratio {found / hand_all:.4f}"
    )
    print(f"budget_search_test_errmax_ratio={found / hand:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
