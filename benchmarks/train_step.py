"""Seconds per full-batch stage-1 iteration on a problem shaped like the paper's Vlasov study.

25 training parameters x 251 snapshots of dimension 4096 (64 x 64), latent size 5, hidden widths
1000-500-50 and 50. For 1000-500-50 the time is compared with the GEMM floor
6 * n_snapshots * n_weights / (matmul FLOP/s measured in this run): forward (2) and backward (4)
FLOPs per weight per snapshot at the machine's own matmul speed.

    python benchmarks/train_step.py [--repeats 5] [--device auto] [--threads N]

The last two lines are ``train_step_ratio_to_gemm_floor=<number>`` and
``train_step_hidden50_s=<number>`` (medians over repeats).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mlasdi.config import Stage1Config
from mlasdi.nn import count_parameters
from mlasdi.rom import resolve_device
from mlasdi.train import Stage1Trainer

N_PARAMS, N_T, N_X, N_V, LATENT = 25, 251, 64, 64, 5


def synthetic_snapshots(
    seed: int = 0, n_params: int = N_PARAMS, n_t: int = N_T, nx: int = N_X, nv: int = N_V
) -> np.ndarray:
    """Smooth travelling waves [n_params, n_t, nx * nv] (default [25, 251, 4096]) with
    parameter-dependent speeds (float32)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 2 * np.pi, nx, endpoint=False)
    v = np.linspace(-7, 7, nv, endpoint=False)
    t = np.linspace(0, 5, n_t)
    speed = rng.uniform(0.5, 1.5, n_params)
    width = rng.uniform(0.9, 1.1, n_params)
    X, V = np.meshgrid(x, v, indexing="ij")
    fields = (
        np.exp(-(V[None, None] ** 2) / (2 * width[:, None, None, None]))
        * (1 + 0.1 * np.cos(X[None, None] - speed[:, None, None, None] * t[None, :, None, None]))
    ).astype(np.float32)
    return fields.transpose(0, 1, 3, 2).reshape(n_params, n_t, -1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_iteration(
    U: torch.Tensor, hidden: tuple[int, ...], repeats: int, iters: int
) -> tuple[float, int]:
    trainer = Stage1Trainer.create(U, 0.02, hidden, LATENT, "softplus", Stage1Config(), seed=0)
    trainer.step()  # warm-up: allocations, optimiser state
    times = []
    for _ in range(repeats):
        sync(U.device)
        start = time.perf_counter()
        for _ in range(iters):
            trainer.step()
        sync(U.device)
        times.append((time.perf_counter() - start) / iters)
    return statistics.median(times), count_parameters(trainer.model)


def matmul_flops(U: torch.Tensor, width: int, repeats: int) -> float:
    """FLOP/s of the dominant GEMM, [n_snapshots, 4096] x [4096, width], median of repeats."""
    W = torch.randn(U.shape[1], width, dtype=U.dtype, device=U.device)
    torch.mm(U, W)
    times = []
    for _ in range(repeats):
        sync(U.device)
        start = time.perf_counter()
        torch.mm(U, W)
        sync(U.device)
        times.append(time.perf_counter() - start)
    return 2 * U.shape[0] * U.shape[1] * width / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    U = torch.as_tensor(synthetic_snapshots()).to(device)
    n_snapshots = U.shape[0] * U.shape[1]
    print(f"device={device} threads={torch.get_num_threads()} snapshots={n_snapshots} state=4096")

    flops = matmul_flops(U.reshape(n_snapshots, -1), 1000, args.repeats)
    big_s, big_weights = seconds_per_iteration(U, (1000, 500, 50), args.repeats, 2)
    floor = 6 * n_snapshots * big_weights / flops
    print(f"matmul {flops / 1e9:.1f} GFLOP/s")
    print(
        f"hidden 1000-500-50: {big_s:.3f} s/iter, weights {big_weights}, "
        f"GEMM floor {floor:.3f} s, ratio {big_s / floor:.3f}"
    )
    small_s, small_weights = seconds_per_iteration(U, (50,), args.repeats, 10)
    small_floor = 6 * n_snapshots * small_weights / flops
    print(
        f"hidden 50: {small_s:.4f} s/iter, weights {small_weights}, GEMM floor {small_floor:.4f} s"
    )
    print(f"train_step_ratio_to_gemm_floor={big_s / floor:.3f}")
    print(f"train_step_hidden50_s={small_s:.4f}")


if __name__ == "__main__":
    main()
