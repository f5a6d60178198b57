"""The CUDA-graph switch and its CPU behaviour (the captured step itself is tested in test_gpu.py)."""

import pytest
import torch

from mlasdi import cuda_graphs
from mlasdi.config import Stage1Config
from mlasdi.train import Stage1Trainer


def _trainer(data, seed=3):
    U = torch.as_tensor(data.flat_snapshots(), dtype=torch.float64)
    return Stage1Trainer.create(U, data.dt, (16,), 3, "softplus", Stage1Config(iters=8), seed)


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("0", False), ("1", True)])
def test_switch_reads_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(cuda_graphs.ENV_SWITCH, raising=False)
    else:
        monkeypatch.setenv(cuda_graphs.ENV_SWITCH, value)
    assert cuda_graphs.enabled() is expected


def test_switch_rejects_other_values(monkeypatch):
    monkeypatch.setenv(cuda_graphs.ENV_SWITCH, "yes")
    with pytest.raises(ValueError, match="MLASDI_CUDA_GRAPHS must be 0 or 1, got 'yes'"):
        cuda_graphs.enabled()


def test_capture_refuses_a_cpu_trainer(tiny_train):
    trainer = _trainer(tiny_train)
    with pytest.raises(cuda_graphs.CaptureError, match="needs a CUDA device; .* on cpu"):
        cuda_graphs.capture(trainer)
    assert trainer.captured is None


def test_switch_on_leaves_cpu_training_unchanged(tiny_train, monkeypatch):
    # Seed 3, float64, 8 iterations: with the switch on, a CPU trainer captures nothing and its
    # parameters and loss history are bit-for-bit those of a run with the switch off.
    monkeypatch.setenv(cuda_graphs.ENV_SWITCH, "1")
    on = _trainer(tiny_train)
    on.train(8)
    monkeypatch.setenv(cuda_graphs.ENV_SWITCH, "0")
    off = _trainer(tiny_train)
    off.train(8)
    assert on.captured is None
    assert torch.equal(on.optimizer.param, off.optimizer.param)
    assert torch.equal(on.history, off.history)


def test_warm_up_steps_leave_no_trace(tiny_train):
    # Seed 3, float64: three gradient + Adam steps inside state_restored (what the capture's
    # warm-up runs), then 8 iterations, equal bit for bit to 8 iterations of a fresh trainer.
    warmed, fresh = _trainer(tiny_train), _trainer(tiny_train)
    with cuda_graphs.state_restored(warmed.optimizer):
        for _ in range(3):
            warmed.gradients()
            warmed.optimizer.step(1e-2)
        assert not torch.equal(warmed.optimizer.param, fresh.optimizer.param)  # they did move it
    warmed.train(8)
    fresh.train(8)
    assert torch.equal(warmed.optimizer.param, fresh.optimizer.param)
    assert torch.equal(warmed.history, fresh.history)
    for a, b in zip(
        warmed.optimizer.state_dict().values(), fresh.optimizer.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
