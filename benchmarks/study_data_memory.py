"""Benchmark: peak memory of a study's data path on GPLaSDI's Burgers 1D example (issue 14).

Loads the study data of the ``burgers1d_gplasdi`` preset (441 parameters x 1001 levels x 1001
nodes: 3.5 GB of float64 in the file) as ``mlasdi-study run`` does, trains its stage-1
autoencoder for ``--iters`` iterations on the training snapshots, and evaluates the one-stage ROM
on every test parameter over every test level, ``run.eval_batch_size`` parameters at a time, as a
trial does. Prints ``truth=`` (``reader``: read from the file in batches; ``array``: in memory),
``load_s``, ``train_s``, ``eval_s``, ``err_max`` (of that barely trained ROM: the numbers are
finite), ``peak_rss_mb`` (``resource.getrusage``: the process's high-water mark, load + training +
evaluation) and then ``study_data_pickle_mb`` (what the object store holds for the trials).

``--file`` is an existing snapshot file of the preset's settings (never regenerated);
``--lazy-bytes`` overrides ``studies.trial.LAZY_TRUTH_BYTES`` (a huge value: the in-memory path).
``--smoke``: the preset's smoke data (101 x 101 on a 3 x 3 grid, generated into a temporary
directory) read through the reader (CI).
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import resource
import tempfile
import time
from pathlib import Path

import torch

from mlasdi import study_data as study_data_module
from mlasdi.data import SnapshotReader
from mlasdi.rom import stage1_rom, stage1_trainer
from mlasdi.study_data import load_study_data
from studies.spec import load_spec, smoke_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the preset's smoke data (CI)")
    parser.add_argument("--file", default="data/burgers1d_1001x1001_21x21.h5")
    parser.add_argument("--lazy-bytes", type=int, default=None, help="LAZY_TRUTH_BYTES override")
    parser.add_argument("--iters", type=int, default=300, help="stage-1 iterations")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    spec = load_spec("burgers1d_gplasdi")
    with tempfile.TemporaryDirectory(prefix="mlasdi-memory-") as tmp:
        if args.smoke:
            spec = smoke_spec(spec)
            data_spec = dataclasses.replace(spec.data, file=str(Path(tmp) / "smoke.h5"))
            args.lazy_bytes, args.iters = 0, 2
        else:
            data_spec = dataclasses.replace(spec.data, file=args.file, generate=False)
        spec = dataclasses.replace(spec, data=data_spec)
        spec.data.check()
        if args.lazy_bytes is not None:
            study_data_module.LAZY_TRUTH_BYTES = args.lazy_bytes

        start = time.perf_counter()
        data = load_study_data(spec.data, progress=False)
        load_s = time.perf_counter() - start
        method = spec.methods[0]
        config = spec.rom_config(
            hidden=method.hidden[0],
            latent_dim=method.latent_dims[0],
            seed=0,
            stage_iters=(args.iters,),
            method=method.name,
        )
        start = time.perf_counter()
        U = torch.as_tensor(data.U_train)
        trainer = stage1_trainer(U, data.params_train, data.times, config)
        trainer.train(args.iters)
        rom = stage1_rom(trainer.selected()[1], U, data.params_train, data.times, config)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        errors = data.test_errors(rom, spec.run.eval_batch_size)
        eval_s = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lazy = isinstance(data.truth_test, SnapshotReader)
        print(f"truth={'reader' if lazy else 'array'}")
        print(f"truth_shape={list(data.truth_test.shape)}")
        print(f"train_shape={list(data.U_train.shape)}")
        print(f"errors_shape={list(errors.shape)}")
        print(f"load_s={load_s:.2f}")
        print(f"train_s={train_s:.2f}")
        print(f"eval_s={eval_s:.2f}")
        print(f"err_max={float(errors[-1].max(-1).max()):.4g}")
        print(f"peak_rss_mb={peak_mb:.0f}")
        print(f"study_data_pickle_mb={len(pickle.dumps(data)) / 2**20:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
