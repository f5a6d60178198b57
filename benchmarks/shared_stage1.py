"""Stage-1 compute a study would save if ``mlasdi`` and ``mlasdi_val`` trials with the same
stage-1 setup (architecture, latent size, seed, and the held-out split that the fast recipe's
checkpoint selection uses) trained one stage 1 between them. Counted from the plan
(:meth:`studies.plan.Trial.shared_cost`, the GEMM floor of ``mlasdi-study plan``); nothing is
trained.

    python benchmarks/shared_stage1.py [PRESET or spec path, default vlasov_cpu]

Last line: ``stage1_compute_fraction_shared=<x>`` (stage-1 compute with one shared stage 1 over
stage-1 compute today).
"""

from __future__ import annotations

import sys

from studies.plan import n_train_points, trials
from studies.spec import load_spec


def main(argv: list[str]) -> None:
    spec = load_spec(argv[0] if argv else "vlasov_cpu")
    n_state = spec.data.n_state
    n_snap = n_train_points(spec) * spec.data.n_train_times
    today, groups = 0, {}
    for t in trials(spec):
        stage1_iters = t.schedule()[0].until
        weights = t.stage1_weights(n_state)
        compute = 6 * n_snap * stage1_iters * weights
        today += compute
        split = spec.method(t.method).val_fraction if spec.training.recipe != "paper" else None
        shareable = t.method in ("mlasdi", "mlasdi_val")
        key = (t.hidden, t.latent_dim, t.seed, split) if shareable else (t.trial_id,)
        until, w = groups.get(key, (0, weights))
        groups[key] = (max(until, stage1_iters), w)
    shared = sum(6 * n_snap * until * w for until, w in groups.values())
    print(f"study {spec.name}: {len(trials(spec))} trials, {len(groups)} stage-1 runs if shared")
    print(f"stage-1 compute today {today:.4g}, shared {shared:.4g} (FLOP floor)")
    print(f"stage1_compute_fraction_shared={shared / today:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
