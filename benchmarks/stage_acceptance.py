"""Benchmark: validation-accepted residual stages (``mlasdi_val``) against their own stage 1.

On the ``vlasov_quick`` data (32 x 32, 25 training / 81 test parameters, 51 snapshots), for
seeds 0-2 and latent sizes 4 and 5, mLaSDI hidden [50] with the mirrored residual decoder and the
preset's training settings (the paper's recipe): stage 1 for ``--iters`` iterations on every
training parameter, then ``--stages - 1`` residual stages of ``--iters`` iterations each, trained
on the fit split and accepted on the held-out split (``mlasdi.acceptance``, checkpoints every
``--every`` iterations). For comparison the paper's mLaSDI residual stage (every stage kept,
trained on all training parameters) is fitted from the same stage-1 model.

Per model it prints the held-out max error (over the held-out training parameters) and the unseen
max error (over the test parameters that are not training points) of stage 1 and of the final
accepted model, the decisions, and the paper's mLaSDI unseen max error. Last lines:
``stages_rejected=<n>``, ``stages_trained=<n>`` and ``accepted_worse_than_stage1=<count>`` (models
whose final held-out or unseen max error is above their stage-1 model's; the goal is 0).
``--smoke`` runs the oscillator of the ``smoke`` preset for a few iterations (CI).
"""

from __future__ import annotations

import argparse
import time

import torch

from mlasdi.acceptance import HeldOut, train_accepted_stage
from mlasdi.rom import (
    freeze,
    residual_stage_data,
    residual_stage_seed,
    stage1_rom,
    stage1_trainer,
)
from mlasdi.study_data import load_study_data
from mlasdi.train import ResidualTrainer
from studies.spec import load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the smoke preset's oscillator (CI)")
    parser.add_argument("--iters", type=int, default=2000, help="iterations of every stage")
    parser.add_argument("--stages", type=int, default=2, help="stages in all (>= 2)")
    parser.add_argument("--every", type=int, default=100, help="held-out checkpoint spacing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--latents", type=int, nargs="+", default=[4, 5])
    parser.add_argument("--hidden", type=int, nargs="+", default=[50])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iters, args.every, args.seeds, args.latents, args.hidden = 30, 10, [0], [3], [20]
    torch.set_num_threads(args.threads)

    spec = load_spec("smoke" if args.smoke else "vlasov_quick")
    start = time.perf_counter()
    data = load_study_data(spec.data, progress=False)
    print(
        f"data {spec.name}: {data.U_train.shape[0]} training / {data.params_test.shape[0]} test "
        f"parameters, {data.times.size} snapshots, state {data.n_state} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    U = torch.as_tensor(data.U_train)
    held_out = HeldOut.split(U, data.params_train)
    print(
        f"held out {held_out.params_val.shape[0]} of {data.U_train.shape[0]} training "
        f"parameters: {held_out.params_val.round(4).tolist()}"
    )
    print(
        f"hidden {args.hidden}, {args.stages} stages of {args.iters} iterations, checkpoints "
        f"every {args.every}, torch threads {args.threads}; the machine is shared by other "
        "jobs, so times are indicative only"
    )
    unseen = ~data.is_train
    hidden = tuple(args.hidden)
    rejected = trained = worse = 0
    for latent in args.latents:
        for seed in args.seeds:
            config = spec.rom_config(
                hidden=hidden,
                latent_dim=latent,
                seed=seed,
                stage_iters=(args.iters,) * args.stages,
                residual_hidden=hidden[::-1],
            )
            t0 = time.perf_counter()
            trainer = stage1_trainer(U, data.params_train, data.times, config)
            trainer.train(args.iters)
            rom1 = stage1_rom(trainer.selected()[1], U, data.params_train, data.times, config)
            rom, decisions = rom1, []
            for k, stage in enumerate(config.residual_stages, start=2):
                seed_k = residual_stage_seed(seed, k)
                rom, decision, _ = train_accepted_stage(
                    rom, held_out, stage, seed=seed_k, every=args.every
                )
                decisions.append(decision)
            # The paper's mLaSDI from the same stage 1: every stage kept, all training points.
            paper = rom1
            for k, stage in enumerate(config.residual_stages, start=2):
                Z, target, scale = residual_stage_data(paper, U, data.params_train)
                residual = ResidualTrainer.create(
                    Z, target, stage, seed=residual_stage_seed(seed, k)
                )
                residual.train(stage.iters)
                paper = paper.with_stage(freeze(residual.model), scale)  # type: ignore[arg-type]
            wall = time.perf_counter() - t0
            r = data.test_errors(rom).max(-1)  # [kept stages, n_test]
            r_paper = data.test_errors(paper)[-1].max(-1)
            held1, held_final = decisions[0].err_without, decisions[-1].err_kept
            unseen1, unseen_final = float(r[0][unseen].max()), float(r[-1][unseen].max())
            n_rejected = sum(not d.accepted for d in decisions)
            rejected += n_rejected
            trained += len(decisions)
            is_worse = held_final > held1 or unseen_final > unseen1
            worse += is_worse
            print(
                f"model=l{latent}_s{seed} stage1_heldout_max={held1:.4f} "
                f"final_heldout_max={held_final:.4f} stage1_unseen_max={unseen1:.4f} "
                f"final_unseen_max={unseen_final:.4f} final_err_mean={float(r[-1].mean()):.4f} "
                f"accepted={''.join('y' if d.accepted else 'n' for d in decisions)} "
                f"stops={[d.stop_iteration for d in decisions]} "
                f"candidate_heldout_max={[round(d.err_with, 4) for d in decisions]} "
                f"mlasdi_unseen_max={float(r_paper[unseen].max()):.4f} "
                f"mlasdi_err_mean={float(r_paper.mean()):.4f} "
                f"worse_than_stage1={int(is_worse)} wall_s={wall:.0f}",
                flush=True,
            )
    print(f"stages_rejected={rejected}")
    print(f"stages_trained={trained}")
    print(f"accepted_worse_than_stage1={worse}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
