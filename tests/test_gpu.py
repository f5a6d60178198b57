"""The CUDA path: the same seeded fit on the GPU as on the CPU (skipped without CUDA)."""

import numpy as np
import pytest
import torch

from mlasdi.rom import MultiStageROM, evaluate, fit_rom

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
