"""The CUDA path (skipped without CUDA): the same seeded fit on the GPU as on the CPU, and the
CUDA-graph captured training steps."""

import warnings

import numpy as np
import pytest
import torch

from mlasdi import cuda_graphs
from mlasdi.config import ResidualStageConfig, Stage1Config
from mlasdi.fit import fit_rom
from mlasdi.rom import MultiStageROM, evaluate
from mlasdi.train import ResidualTrainer, Stage1Trainer, least_squares

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_float64_fit_on_cuda_matches_cpu(tiny_oscillator, tiny_train, tiny_config, tmp_path):
    """Seed 7, float64, 30 + 30 iterations: errors agree to 1e-8 (different kernels, same math)."""
    config = tiny_config(dtype="float64")
    truth = tiny_oscillator.flat_snapshots()
    cpu = fit_rom(tiny_train, config, device="cpu")
    gpu = fit_rom(tiny_train, config, device="cuda")
    assert gpu.rom.device.type == "cuda"
    errors_cpu = evaluate(cpu.rom, tiny_oscillator.params, truth)
    errors_gpu = evaluate(gpu.rom, tiny_oscillator.params, truth)
    np.testing.assert_allclose(errors_gpu, errors_cpu, rtol=1e-8, atol=1e-10)
    # A ROM trained on the GPU loads on the CPU and predicts the same.
    gpu.rom.save(tmp_path / "rom")
    loaded = MultiStageROM.load(tmp_path / "rom", device="cpu")
    np.testing.assert_allclose(
        evaluate(loaded, tiny_oscillator.params, truth), errors_gpu, rtol=1e-12, atol=1e-14
    )


# --- CUDA-graph captured steps: bit-for-bit the uncaptured step on the same device ---------------


def _stage1_pair(data, config, seed=3):
    U = torch.as_tensor(data.flat_snapshots(), dtype=torch.float32, device="cuda")
    return [
        Stage1Trainer.create(U, data.dt, (16, 8), 3, "softplus", config, seed) for _ in range(2)
    ]


def _residual_pair(config, seed=5):
    rng = np.random.default_rng(seed)
    Z = torch.as_tensor(rng.standard_normal((2, 33, 3)), dtype=torch.float32, device="cuda")
    target = torch.as_tensor(rng.standard_normal((2, 33, 64)), dtype=torch.float32, device="cuda")
    return [ResidualTrainer.create(Z, target, config, seed) for _ in range(2)]


def _assert_same_training(plain, captured, until, checkpoints=()):
    cuda_graphs.capture(captured)
    for trainer in (plain, captured):
        trainer.train(until, checkpoints=checkpoints, callback=lambda report: None)
    assert plain.captured is None and captured.captured is not None
    assert torch.equal(plain.optimizer.param, captured.optimizer.param)
    for a, b in zip(
        plain.optimizer.state_dict().values(), captured.optimizer.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert torch.equal(plain.history, captured.history)


def test_captured_stage1_step_is_bit_for_bit_the_plain_one(tiny_train):
    # float32, seed 3, hidden (16, 8), latent 3, constant lr 1e-3: 40 iterations with a
    # checkpoint at 15; parameters, Adam moments, step count and every loss term are equal.
    plain, captured = _stage1_pair(tiny_train, Stage1Config(iters=40))
    _assert_same_training(plain, captured, 40, checkpoints=[15])


def test_exact_output_layer_solve_never_syncs_with_the_host():
    # The fast recipe's solve runs every step: a host sync there stalls the GPU each iteration
    # and cannot be captured. set_sync_debug_mode("error") raises on any synchronising call.
    rng = np.random.default_rng(8)
    h = torch.as_tensor(rng.standard_normal((200, 6)), dtype=torch.float32, device="cuda")
    target = torch.as_tensor(rng.standard_normal((200, 5)), dtype=torch.float32, device="cuda")
    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings():  # "a prototype feature": torch's own caveat
            warnings.simplefilter("ignore", UserWarning)
            torch.cuda.set_sync_debug_mode("error")
        X = least_squares(h, target)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = torch.linalg.lstsq(h.double().cpu(), target.double().cpu()).solution
    torch.testing.assert_close(X.cpu().double(), expected, rtol=1e-4, atol=1e-5)


def test_captured_fast_recipe_step_is_bit_for_bit_the_plain_one(tiny_train):
    # The fast recipe's stage 1: the exact output-layer solve inside the captured graph.
    config = Stage1Config(iters=30, output_layer="lstsq")
    plain, captured = _stage1_pair(tiny_train, config)
    _assert_same_training(plain, captured, 30)


def test_captured_residual_step_is_bit_for_bit_the_plain_one():
    # float32, seed 5: Z [2, 33, 3] -> target [2, 33, 64], hidden (16, 8), 40 iterations.
    plain, captured = _residual_pair(ResidualStageConfig(hidden=(16, 8), iters=40))
    _assert_same_training(plain, captured, 40)


def test_captured_cosine_step_equals_the_plain_step_at_the_float32_rate(tiny_train):
    # A schedule's rate is a float32 tensor in the graph: bit-for-bit the plain trainer fed the
    # same rate rounded to float32, and within 1e-4 relative of the unrounded run after 30 steps
    # (the rate moves by < 6e-8 relative; float32 training amplifies such rounding a little).
    config = Stage1Config(iters=30, lr_schedule="cosine")
    plain, captured = _stage1_pair(tiny_train, config)
    exact = plain.learning_rate
    plain.learning_rate = lambda i: float(torch.tensor(exact(i), dtype=torch.float32))
    _assert_same_training(plain, captured, 30)
    (unrounded, _) = _stage1_pair(tiny_train, config)
    unrounded.train(30)
    torch.testing.assert_close(
        captured.optimizer.param, unrounded.optimizer.param, rtol=1e-4, atol=1e-6
    )


def test_captured_trainer_resumes_from_a_state(tiny_train):
    # A state saved at iteration 10 by a plain trainer and loaded into a captured one (copied
    # into the graph's tensors) continues exactly as the plain trainer does.
    plain, captured = _stage1_pair(tiny_train, Stage1Config(iters=25))
    plain.train(10)
    cuda_graphs.capture(captured)
    captured.load_state_dict(plain.state_dict())
    plain.train(25)
    captured.train(25)
    assert torch.equal(plain.optimizer.param, captured.optimizer.param)


def test_switch_captures_on_cuda(tiny_train, monkeypatch):
    monkeypatch.setenv(cuda_graphs.ENV_SWITCH, "1")
    trainer, _ = _stage1_pair(tiny_train, Stage1Config(iters=5))
    trainer.train(5)
    assert trainer.captured is not None
