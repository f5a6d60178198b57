"""Stage-1 compute a study saves by training one stage 1 for the trials that share its setup
(``mlasdi`` and ``mlasdi_val`` of one architecture, latent size and seed; ``gplasdi`` too where
it has the same architecture), counted two ways from the spec, nothing trained:

* predicted: trials grouped here by (hidden, latent size, seed, held-out fraction), each group
  training stage 1 once to its largest stage-1 budget;
* planned: the stage-1 iterations of ``mlasdi-study plan`` (:func:`studies.plan.plan`, which
  counts the shared stage 1 of a :class:`~studies.plan.TrialGroup` once), i.e. what a study run
  trains.

Both over the stage-1 compute if every trial trained its own stage 1 (the GEMM floor of
``mlasdi-study plan``).

    python benchmarks/shared_stage1.py [PRESET or spec path, default vlasov_cpu]

Last lines: ``stage1_compute_fraction_shared=<x>`` (predicted) and
``stage1_compute_fraction_planned=<x>``; the script fails if they differ.
"""

from __future__ import annotations

import sys

from studies.plan import n_train_points, plan, trials
from studies.spec import load_spec


def main(argv: list[str]) -> None:
    spec = load_spec(argv[0] if argv else "vlasov_cpu")
    n_state = spec.data.n_state
    n_snap = n_train_points(spec) * spec.data.n_train_times
    today, groups = 0, {}
    for t in trials(spec):
        stage1_iters = t.schedule()[0].until
        weights = t.stage1_weights(n_state)
        today += 6 * n_snap * stage1_iters * weights
        key = (t.hidden, t.latent_dim, t.seed, spec.method(t.method).val_fraction)
        until, w = groups.get(key, (0, weights))
        groups[key] = (max(until, stage1_iters), w)
    shared = sum(6 * n_snap * until * w for until, w in groups.values())
    planned = sum(p.trial.cost(p.shared[0], 0, n_state, n_snap) for p in plan(spec))
    print(f"study {spec.name}: {len(trials(spec))} trials, {len(groups)} stage-1 runs if shared")
    print(
        f"stage-1 compute: every trial its own {today:.4g}, shared {shared:.4g}, "
        f"planned {planned:.4g} (FLOP floor)"
    )
    print(f"stage1_compute_fraction_shared={shared / today:.4f}")
    print(f"stage1_compute_fraction_planned={planned / today:.4f}")
    if planned != shared:
        sys.exit("the plan's stage-1 compute differs from the predicted sharing")


if __name__ == "__main__":
    main(sys.argv[1:])
