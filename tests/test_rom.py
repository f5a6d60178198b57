"""Training loops and the multi-stage ROM against exact or independently computed answers.

Fixtures (tests/conftest.py): the oscillator on 64 points x 33 times, train A = 1.0, 1.4, test 1.2;
``tiny_fit2``/``tiny_fit2_f64``: 2-stage ROMs, hidden (16,), latent 3, 30 + 30 iterations, seed 7.
"""

import copy
import dataclasses
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.overrides import TorchFunctionMode

from mlasdi import rom as rom_module
from mlasdi.config import ACTIVATIONS, ResidualStageConfig, Stage1Config
from mlasdi.dynamics import affine_fit_losses, time_derivative
from mlasdi.fit import fit_rom
from mlasdi.nn import MLP, Autoencoder, ResidualDecoder
from mlasdi.rom import MultiStageROM, evaluate
from mlasdi.train import (
    TRAINER_STATE_FORMAT,
    BestCheckpoint,
    CheckpointReport,
    DivergenceError,
    FlatAdam,
    LayerPass,
    ResidualTrainer,
    Stage1Trainer,
    bias_column_block,
    flatten_parameters,
)


def _inputs(data):
    """(params [n, 1], truth [n, n_t, n_state], u0 [n, n_state]) of a snapshot set."""
    flat = data.flat_snapshots()
    return data.params, flat, flat[:, 0]


def _stage1_trainer(data, *, seed=3, dtype=torch.float64, **stage1):
    U = torch.as_tensor(data.flat_snapshots(), dtype=dtype)
    config = Stage1Config(iters=40, **stage1)
    return Stage1Trainer.create(U, data.dt, (16,), 3, "softplus", config, seed)


def _zero_last_linear(decoder: torch.nn.Module) -> torch.nn.Module:
    last = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return decoder


# --- MultiStageROM -------------------------------------------------------------------------------


def test_zero_residual_stage_leaves_predictions_unchanged(tiny_fit2, tiny_oscillator):
    rom = tiny_fit2.rom
    params, _, u0 = _inputs(tiny_oscillator)
    zero = _zero_last_linear(ResidualDecoder(3, (16,), tiny_oscillator.n_state, kappa=2.0))
    extended = rom.with_stage(zero, scale=3.7)
    assert extended.n_stages == 3 and rom.n_stages == 2
    before = rom.predict(params, u0)
    after = extended.predict(params, u0)
    assert after.dtype == torch.float32 and after.shape == (3, 33, 64)
    np.testing.assert_array_equal(after.numpy(), before.numpy())
    np.testing.assert_array_equal(extended.predict(params, u0, n_stages=2).numpy(), before.numpy())


def test_predict_is_the_sum_of_scaled_stage_decoders(tiny_fit2_f64, tiny_oscillator):
    # u~ = dec1(z) + e1 dec2(z), with z from an independent scipy-expm integration of the GP-mean
    # coefficients (float64 ROM: agreement to round-off).
    rom = tiny_fit2_f64.rom
    params, _, u0 = _inputs(tiny_oscillator)
    with torch.no_grad():
        z0 = rom.autoencoder.encode(torch.as_tensor(u0)).numpy()
    mean, _ = rom.gp.predict(params)
    Xi = mean.reshape(-1, 4, 3)
    Z = np.empty((3, 33, 3))
    for i in range(3):
        M = np.zeros((4, 4))
        M[:3, :3], M[:3, 3] = Xi[i, 1:, :].T, Xi[i, 0, :]
        for j, t in enumerate(rom.times - rom.times[0]):
            Z[i, j] = (scipy.linalg.expm(M * t) @ np.append(z0[i], 1.0))[:3]
    np.testing.assert_allclose(rom.latent_trajectories(params, u0).numpy(), Z, atol=1e-10)
    with torch.no_grad():
        Zt = torch.as_tensor(Z)
        stage1 = rom.autoencoder.decode(Zt).numpy()
        stage2 = stage1 + rom.scales[0] * rom.residual_decoders[0](Zt).numpy()
    np.testing.assert_allclose(rom.predict(params, u0, n_stages=1).numpy(), stage1, atol=1e-9)
    np.testing.assert_allclose(rom.predict(params, u0).numpy(), stage2, atol=1e-9)
    with pytest.raises(ValueError, match=r"n_stages must be in 1..2, got 3"):
        rom.predict(params, u0, n_stages=3)


def test_residual_scale_is_std_of_stage1_residual(tiny_fit2_f64, tiny_train):
    rom = tiny_fit2_f64.rom
    params, truth, u0 = _inputs(tiny_train)
    residual = truth - rom.predict(params, u0, n_stages=1).numpy()
    # torch.std is the unbiased (n - 1) estimator.
    np.testing.assert_allclose(rom.scales[0], residual.std(ddof=1), rtol=1e-10)


def test_rom_save_load_round_trip_without_pickle(tiny_fit2, tiny_oscillator, tmp_path):
    rom = tiny_fit2.rom
    params, _, u0 = _inputs(tiny_oscillator)
    directory = rom.save(tmp_path / "rom")
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "gp.npz", "weights.pt"]
    weights = torch.load(directory / "weights.pt", weights_only=True)
    assert set(weights) == {"autoencoder", "residual_0"}
    with np.load(directory / "gp.npz", allow_pickle=False) as arrays:
        assert all(arrays[k].dtype != object for k in arrays.files)
    meta = json.loads((directory / "config.json").read_text())
    assert meta["scales"] == rom.scales and meta["n_state"] == 64

    loaded = MultiStageROM.load(directory, device="cpu")
    assert loaded.config == rom.config and loaded.n_stages == 2
    assert loaded.dtype == torch.float32 and loaded.latent_bound == rom.latent_bound
    np.testing.assert_array_equal(loaded.times, rom.times)
    for n_stages in (1, 2):
        np.testing.assert_array_equal(
            loaded.predict(params, u0, n_stages=n_stages).numpy(),
            rom.predict(params, u0, n_stages=n_stages).numpy(),
        )


def test_rom_predicts_with_the_rk4_integrator(tiny_fit2, tiny_oscillator):
    # integrator="rk4" with 8 substeps on dt = 2 pi / 32 agrees with the exact integrator.
    rom = tiny_fit2.rom
    params, _, u0 = _inputs(tiny_oscillator)
    rk4 = dataclasses.replace(
        rom, config=dataclasses.replace(rom.config, integrator="rk4", rk4_substeps=8)
    )
    Z_exact = rom.latent_trajectories(params, u0)
    Z_rk4 = rk4.latent_trajectories(params, u0)
    assert Z_rk4.dtype == Z_exact.dtype == torch.float32
    np.testing.assert_allclose(Z_rk4.numpy(), Z_exact.numpy(), rtol=1e-4, atol=1e-4)


def test_latent_blow_up_raises_divergence_error(tiny_fit2, tiny_oscillator):
    params, _, u0 = _inputs(tiny_oscillator)
    tight = dataclasses.replace(tiny_fit2.rom, latent_bound=1e-9)
    with pytest.raises(DivergenceError, match="predicted latent trajectories blew up"):
        tight.predict(params, u0)


def test_fit_result_shapes_and_parameter_count(tiny_fit2):
    assert len(tiny_fit2.stage_times_s) == 2 and all(t > 0 for t in tiny_fit2.stage_times_s)
    h1, h2 = tiny_fit2.loss_histories
    assert h1.shape == (30, 4) and h2.shape == (30, 1)
    assert torch.isfinite(h1).all() and torch.isfinite(h2).all()
    # 64-16-3 encoder, 3-16-64 decoder, 3-16-64 residual decoder (weights + biases).
    expected = (64 * 16 + 16 + 16 * 3 + 3) + 2 * (3 * 16 + 16 + 16 * 64 + 64)
    assert tiny_fit2.rom.n_model_params == expected


def test_fit_rom_is_reproducible_from_the_seed(tiny_fit2, tiny_train, tiny_oscillator, tiny_config):
    again = fit_rom(tiny_train, tiny_config(), device="cpu")
    a, b = tiny_fit2.rom, again.rom
    for mine, theirs in [
        (a.autoencoder, b.autoencoder),
        (a.residual_decoders[0], b.residual_decoders[0]),
    ]:
        for (name, x), (_, y) in zip(
            mine.state_dict().items(), theirs.state_dict().items(), strict=True
        ):
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    assert a.scales == b.scales
    for x, y in zip(tiny_fit2.loss_histories, again.loss_histories, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    params, truth, _ = _inputs(tiny_oscillator)
    np.testing.assert_array_equal(evaluate(a, params, truth), evaluate(b, params, truth))
    # ... while another seed gives other initial weights (seed 7 is the config's).
    U = torch.as_tensor(tiny_train.flat_snapshots(), dtype=torch.float32)
    init = [
        Stage1Trainer.create(U, tiny_train.dt, (16,), 3, "softplus", Stage1Config(), seed).model
        for seed in (7, 7, 8)
    ]
    assert torch.equal(init[0].encoder[0].weight, init[1].encoder[0].weight)
    assert not torch.equal(init[0].encoder[0].weight, init[2].encoder[0].weight)


def test_fit_rom_calls_stage_callbacks_at_checkpoints(tiny_train, tiny_config):
    seen: list[tuple[int, int]] = []

    def stage_callback(stage):
        def report(checkpoint: CheckpointReport) -> None:
            seen.append((stage, checkpoint.iteration))

        return report

    config = tiny_config(iters=12)
    fit_rom(
        tiny_train,
        config,
        device="cpu",
        stage_callback=stage_callback,
        checkpoints={1: [4, 12], 2: [5]},
    )
    assert seen == [(1, 4), (1, 12), (2, 5)]


def test_evaluate_equals_an_independent_relative_error(tiny_fit2_f64, tiny_oscillator):
    # r(mu) = max_t ||u - u~||_2 / ||u||_2 over the whole state at each time, per stage count.
    rom = tiny_fit2_f64.rom
    params, truth, u0 = _inputs(tiny_oscillator)
    errors = evaluate(rom, params, truth, batch_size=2)  # 3 parameters: batches of 2 and 1
    assert errors.shape == (2, 3, 33)
    for k in (1, 2):
        prediction = rom.predict(params, u0, n_stages=k).numpy()
        per_time = np.linalg.norm(truth - prediction, axis=-1) / np.linalg.norm(truth, axis=-1)
        np.testing.assert_allclose(errors[k - 1], per_time, rtol=1e-12)
        np.testing.assert_allclose(errors[k - 1].max(-1), per_time.max(-1), rtol=1e-12)
    # Other batch sizes change the batched matmuls' rounding only.
    np.testing.assert_allclose(evaluate(rom, params, truth, batch_size=32), errors, rtol=1e-14)


def test_evaluate_batches_hold_at_most_its_value_budget(
    tiny_fit2_f64, tiny_oscillator, monkeypatch
):
    # With a budget of two parameters' snapshots, batch_size 32 reads the truth two parameters
    # at a time (rows 0-1, then 2), and the errors are those of batches of 2 to rounding.
    rom = tiny_fit2_f64.rom
    params, truth, _ = _inputs(tiny_oscillator)
    reads = []

    class Recorded:
        shape = truth.shape

        def __getitem__(self, rows):
            reads.append((rows.start, rows.stop))
            return truth[rows]

    monkeypatch.setattr(rom_module, "EVAL_BATCH_VALUES", 2 * truth.shape[1] * truth.shape[2] + 1)
    errors = evaluate(rom, params, Recorded(), batch_size=32)
    assert reads == [(0, 2), (2, 3)]
    np.testing.assert_allclose(errors, evaluate(rom, params, truth, batch_size=2), rtol=1e-14)
    monkeypatch.setattr(rom_module, "EVAL_BATCH_VALUES", 1)  # less than one parameter: one each
    reads.clear()
    evaluate(rom, params, Recorded(), batch_size=32)
    assert reads == [(0, 1), (1, 2), (2, 3)]


def test_fit_rom_rejects_a_latent_size_not_smaller_than_the_state(tiny_config):
    from mlasdi.problems import oscillator

    small = oscillator.snapshot_set(n_x=3, n_t=9)
    with pytest.raises(ValueError, match="latent size 3 must be smaller than the state size 3"):
        fit_rom(small, tiny_config(), device="cpu")
    with pytest.raises(ValueError, match="latent size 4 must be smaller than the state size 4"):
        Autoencoder(4, (8,), 4)


# --- trainers ------------------------------------------------------------------------------------


def test_stage1_loss_terms_equal_an_independent_computation(tiny_train):
    # float64; central2 so that numpy's np.gradient(edge_order=2) is the same operator;
    # non-default betas so that swapped weights would show.
    trainer = _stage1_trainer(tiny_train, fd_scheme="central2", beta1=0.3, beta2=0.05)
    terms = trainer.gradients()
    U = tiny_train.flat_snapshots()
    with torch.no_grad():
        z = trainer.model.encode(torch.as_tensor(U)).numpy()
        reconstruction = trainer.model.decode(torch.as_tensor(z)).numpy()
    recon = np.mean((reconstruction - U) ** 2)
    dZdt = np.gradient(z, tiny_train.dt, axis=1, edge_order=2)
    residuals, norms = [], []
    for i in range(z.shape[0]):
        Theta = np.column_stack([np.ones(z.shape[1]), z[i]])
        Xi, *_ = np.linalg.lstsq(Theta, dZdt[i], rcond=None)
        residuals.append(Theta @ Xi - dZdt[i])
        norms.append(np.linalg.norm(Xi, "fro"))
    dynamics = np.mean(np.square(residuals))
    coefficients = np.mean(norms)
    expected = [recon + 0.3 * dynamics + 0.05 * coefficients, recon, dynamics, coefficients]
    np.testing.assert_allclose(terms.numpy(), expected, rtol=1e-9)
    # The first history row is the loss before the first step.
    trainer.train(1)
    np.testing.assert_allclose(trainer.history[0].numpy(), expected, rtol=1e-9)
    assert trainer.term_names == ("loss", "reconstruction", "dynamics", "coefficients")


def _autograd_gradients(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_stage1_gradients_equal_autograd_of_the_plain_loss(
    tiny_train, activation, latent_losses_through_qr
):
    # float64, seed 3, hidden (16, 8), latent 3, beta1 0.3, beta2 0.05: the hand-written
    # backward pass (trainer.gradients) against autograd through nn.Sequential and the plain MSE,
    # with the latent losses (a) from affine_fit_losses: to 1e-13 of each parameter's largest
    # gradient, and (b) by differentiating the QR least-squares fit: to 1e-7 (the closed-form and
    # the QR gradients differ by conditioning-limited rounding, ~2e-9 here, in the latent bias
    # gradient, a cancelling sum since the affine library absorbs constant shifts of z).
    U = torch.as_tensor(tiny_train.flat_snapshots())
    U_flat = U.reshape(-1, U.shape[-1])
    config = Stage1Config(iters=40, beta1=0.3, beta2=0.05)
    trainer = Stage1Trainer.create(U, tiny_train.dt, (16, 8), 3, activation, config, 3)
    model = trainer.model
    terms = trainer.gradients()
    for latent_losses, tolerance in ((affine_fit_losses, 1e-13), (latent_losses_through_qr, 1e-7)):
        z = model.encode(U_flat)
        reconstruction = torch.nn.functional.mse_loss(model.decode(z), U_flat)
        Z = z.view(U.shape[0], U.shape[1], -1)
        dynamics, coefficients = latent_losses(
            Z, time_derivative(Z, tiny_train.dt, config.fd_scheme)
        )
        loss = reconstruction + 0.3 * dynamics + 0.05 * coefficients
        expected_terms = torch.stack([loss, reconstruction, dynamics, coefficients]).detach()
        torch.testing.assert_close(terms, expected_terms, rtol=1e-12, atol=0)
        for p, expected in zip(model.parameters(), _autograd_gradients(model, loss), strict=True):
            torch.testing.assert_close(
                p.grad, expected, rtol=tolerance, atol=tolerance * expected.abs().max()
            )


def test_float32_stage1_fits_a_near_still_latent_as_float64_does(latent_losses_through_qr):
    # float32 networks, the latent fit in float64 (LATENT_FIT_DTYPE). A linear encoder that
    # selects the first two of four state entries gives two latent trajectories [2, 21, 2] that
    # barely move (1e-5 around 1 and -0.5, the second a near copy of the first): the library
    # [1, z] has a condition number of 8.5e7 and 1.0e8, as early in training. The loss terms
    # and the encoder weight's gradient match float64 autograd through a QR fit of the same
    # (exactly float32) trajectories to 1e-6 and 1e-5 (measured 5e-8, 3e-7); a float32 fit
    # misses the dynamics term by 210 %, the coefficient norm by 90 % and the gradient by 6x its
    # size. (The encoder bias's gradient is left out: the affine library absorbs a constant
    # shift of z, so that gradient is a cancelling sum, ill-conditioned even in float64.)
    n_t, dt = 21, 0.05
    t = torch.arange(n_t, dtype=torch.float64) * dt
    U = torch.zeros(2, n_t, 4)
    for i in range(2):
        wave = torch.sin(2 * t + i)
        U[i, :, 0] = 1.0 + 1e-5 * wave
        U[i, :, 1] = -0.5 + 1e-5 * (wave + 1e-3 * torch.cos(3 * t + i))
    U[..., 2], U[..., 3] = torch.cos(t), t
    model = Autoencoder(4, (), 2)
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.eye(2, 4))
        model.encoder[0].bias.zero_()
    reference = copy.deepcopy(model).double()
    trainer = Stage1Trainer(U, dt, model, Stage1Config(iters=1))
    terms = trainer.gradients()

    U_flat = U.double().reshape(-1, 4)
    z = reference.encode(U_flat)
    Z = z.view(2, n_t, 2)
    dynamics, coefficients = latent_losses_through_qr(Z, time_derivative(Z, dt, "central4"))
    loss = (
        torch.nn.functional.mse_loss(reference.decode(z), U_flat)
        + 0.1 * dynamics
        + 1e-3 * coefficients
    )
    grad_weight = _autograd_gradients(reference, loss)[0]
    torch.testing.assert_close(
        terms[2:].double(), torch.stack([dynamics, coefficients]).detach(), rtol=1e-6, atol=0
    )
    torch.testing.assert_close(
        model.encoder[0].weight.grad.double(),
        grad_weight,
        rtol=0,
        atol=1e-5 * float(grad_weight.abs().max()),
    )


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_residual_gradients_equal_autograd_of_the_plain_loss(activation):
    # float64, seed 6: Z [2, 9, 3] -> target [2, 9, 12], hidden (8, 5), sine kappa 2.5 first,
    # then ``activation``; to 1e-12 relative per parameter.
    rng = np.random.default_rng(6)
    Z = torch.as_tensor(rng.standard_normal((2, 9, 3)))
    target = torch.as_tensor(rng.standard_normal((2, 9, 12)))
    config = ResidualStageConfig(hidden=(8, 5), kappa=2.5, activation=activation, iters=5)
    trainer = ResidualTrainer.create(Z, target, config, seed=6)
    (loss_terms,) = trainer.gradients()
    model = trainer.model
    loss = torch.nn.functional.mse_loss(model(Z.reshape(-1, 3)), target.reshape(-1, 12))
    torch.testing.assert_close(loss_terms, loss.detach(), rtol=1e-12, atol=0)
    for p, expected in zip(model.parameters(), _autograd_gradients(model, loss), strict=True):
        torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=1e-12 * expected.abs().max())


def test_residual_training_equals_plain_autograd_and_per_tensor_adam():
    # float64, seed 8: 25 steps of the trainer (hand-written backward, flattened parameters,
    # fused Adam) against autograd of the plain MSE and torch's per-tensor Adam on a twin
    # network; parameters agree to 1e-12 relative.
    rng = np.random.default_rng(8)
    Z = torch.as_tensor(rng.standard_normal((2, 9, 3)))
    target = torch.as_tensor(rng.standard_normal((2, 9, 12)))
    config = ResidualStageConfig(hidden=(8, 5), iters=25, lr=1e-2)
    trainer = ResidualTrainer.create(Z, target, config, seed=8)
    twin = copy.deepcopy(trainer.model)
    for p in twin.parameters():
        p.grad = None
    optimizer = torch.optim.Adam(twin.parameters(), lr=1e-2, foreach=False)
    for _ in range(25):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(twin(Z.reshape(-1, 3)), target.reshape(-1, 12)).backward()
        optimizer.step()
    trainer.train(25)
    for ours, reference in zip(trainer.model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_flatten_parameters_keeps_values_and_makes_views():
    # Seed 11, float64: a 5-3-4 MLP whose last layer is stored as a [4, 4] weight-and-bias block.
    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 4))
    model = model.double()
    before = [p.detach().clone() for p in model.parameters()]
    flat, flat_grad = flatten_parameters(model, bias_columns=[model[2]])
    assert flat.numel() == sum(p.numel() for p in before)
    for p, value in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), value)
    block, grad_block = bias_column_block(model[2])
    assert torch.equal(block, torch.cat([before[2], before[3][:, None]], dim=1))
    # Writing the flat tensors writes the module's parameters and gradients.
    flat.add_(1.0)
    grad_block.fill_(2.0)
    assert torch.equal(model[0].weight.detach(), before[0] + 1.0)
    assert torch.equal(model[2].bias.grad, torch.full((4,), 2.0, dtype=torch.float64))
    assert float(flat_grad.sum()) == 2.0 * block.numel()


def test_bias_column_block_rejects_a_layer_not_flattened_that_way():
    layer = torch.nn.Linear(3, 4)
    layer.weight.grad = torch.zeros_like(layer.weight)
    layer.bias.grad = torch.zeros_like(layer.bias)
    with pytest.raises(ValueError, match="not flattened with its bias as a column"):
        bias_column_block(layer)


def test_flat_adam_equals_torch_fused_adam_bit_for_bit():
    # float32, seed 9, 1012 elements (a size that is not a multiple of the vector width, so the
    # kernel's scalar tail is exercised), 60 steps with a learning rate that changes every step;
    # gradients seeded 1000 + step.
    n = 1012
    start = torch.randn(n, generator=torch.Generator().manual_seed(9))
    reference = torch.nn.Parameter(start.clone())
    ours = start.clone()
    flat_adam = FlatAdam(ours, torch.zeros_like(ours))
    optimizer = torch.optim.Adam([reference], lr=1e-3, fused=True)
    for step in range(60):
        lr = 1e-3 / (1 + step)
        reference.grad = torch.randn(n, generator=torch.Generator().manual_seed(1000 + step))
        flat_adam.grad.copy_(reference.grad)
        optimizer.param_groups[0]["lr"] = lr
        optimizer.step()
        flat_adam.step(lr)
        assert torch.equal(ours, reference.detach()), f"differs after step {step}"


class _ProductShapes(TorchFunctionMode):
    """Records the shape of every matrix product computed under it."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in ("__matmul__", "matmul", "mm", "addmm"):
            self.shapes.append(tuple(out.shape))
        return out


def test_layer_pass_gradients_equal_autograd_and_skip_an_unwanted_input_gradient():
    # float64, seed 11: an MLP 40 -> 16 -> 8 -> 5 (sine, then softplus) on 7 inputs. The hand-written
    # backward writes autograd's parameter gradients (to 1e-12) and returns dL/dx only when
    # asked: without input_grad it never forms the [7, 40] product (for an encoder, the
    # widest one of the step).
    torch.manual_seed(11)
    layers = MLP((40, 16, 8, 5), "softplus", first_activation="sin").double()
    x = torch.randn(7, 40, dtype=torch.float64, requires_grad=True)
    seed_grad = torch.randn(7, 5, dtype=torch.float64)
    (layers(x) * seed_grad).sum().backward()
    expected = [p.grad.clone() for p in layers.parameters()]
    expected_x = x.grad.clone()
    layer_pass = LayerPass(layers)
    for input_grad in (True, False):
        with torch.no_grad(), _ProductShapes() as products:
            layer_pass.forward(x.detach())
            got_x = layer_pass.backward(seed_grad, input_grad=input_grad)
        for got, want in zip(layers.parameters(), expected, strict=True):
            torch.testing.assert_close(got.grad, want, rtol=1e-12, atol=1e-14)
        if input_grad:
            torch.testing.assert_close(got_x, expected_x, rtol=1e-12, atol=1e-14)
        else:
            assert got_x is None
        assert ((7, 40) in products.shapes) == input_grad


def test_stage1_grow_rejects_rows_of_another_shape(tiny_train):
    # tiny_train: rows [n, n_t, n_state]; new rows must match in n_t and n_state, with a row axis.
    trainer = _stage1_trainer(tiny_train)
    U = torch.as_tensor(tiny_train.flat_snapshots())
    n_t, n_state = U.shape[1:]
    for bad in (U[0], U[:1, :-1], U[:1, :, :-1], U[None, :1]):
        with pytest.raises(ValueError, match=rf"new rows must have shape \[m, {n_t}, {n_state}\]"):
            trainer.grow(bad)
    assert trainer.n_train == U.shape[0]
    trainer.grow(U[:1])
    assert trainer.n_train == U.shape[0] + 1


def test_trainer_rejects_a_state_saved_in_another_format(tiny_train):
    # A state saved before FlatAdam (torch.optim.Adam's layout, no "format") would load its
    # moment vectors into the wrong parameters: it is refused with a clear error.
    trainer = _stage1_trainer(tiny_train)
    trainer.train(3)
    state = trainer.state_dict()
    assert state["format"] == TRAINER_STATE_FORMAT
    del state["format"]
    fresh = _stage1_trainer(tiny_train)
    with pytest.raises(
        ValueError, match=f"format 1, expected {TRAINER_STATE_FORMAT}.*train from scratch"
    ):
        fresh.load_state_dict(state)
    state["format"] = TRAINER_STATE_FORMAT + 1  # saved by a later mlasdi
    with pytest.raises(ValueError, match=f"format {TRAINER_STATE_FORMAT + 1}, expected"):
        fresh.load_state_dict(state)
    assert fresh.iteration == 0


def test_stage1_resume_equals_training_straight_through(tiny_train, tmp_path):
    straight = _stage1_trainer(tiny_train, seed=3)
    straight.train(40)

    first = _stage1_trainer(tiny_train, seed=3)
    first.train(20)
    torch.save(first.state_dict(), tmp_path / "trainer.pt")
    # A fresh trainer with other initial weights: everything must come from the state dict.
    resumed = _stage1_trainer(tiny_train, seed=4)
    resumed.load_state_dict(torch.load(tmp_path / "trainer.pt", weights_only=True))
    assert resumed.iteration == 20
    resumed.train(40)
    assert resumed.iteration == straight.iteration == 40
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(resumed.history, straight.history[20:], rtol=0, atol=0)
    torch.testing.assert_close(first.history, straight.history[:20], rtol=0, atol=0)


def test_trainer_state_dict_is_a_snapshot(tiny_train):
    # float64, seed 3: a state taken at iteration 10 and the trainer trained on to 20; a trainer
    # with other weights (seed 4) resumed from that state reaches the same weights at 20.
    first = _stage1_trainer(tiny_train, seed=3)
    first.train(10)
    state = first.state_dict()
    first.train(20)
    resumed = _stage1_trainer(tiny_train, seed=4)
    resumed.load_state_dict(state)
    assert resumed.iteration == 10
    resumed.train(20)
    for a, b in zip(first.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_best_checkpoint_grid_is_the_multiples_in_the_half_open_range():
    # Multiples of every = 100 in (start, until]: the budget itself included, the start not.
    grid = BestCheckpoint(100)
    assert grid.checkpoints(0, 300) == [100, 200, 300]
    assert grid.checkpoints(100, 350) == [200, 300]
    assert grid.checkpoints(0, 99) == []
    assert BestCheckpoint(1).checkpoints(3, 5) == [4, 5]


def test_checkpoint_callback_at_requested_iterations(tiny_train):
    trainer = _stage1_trainer(tiny_train)
    reports: list[CheckpointReport] = []
    trainer.train(25, checkpoints=[3, 10, 25], callback=reports.append)
    assert [r.iteration for r in reports] == [3, 10, 25]
    history = trainer.history
    assert history.shape == (25, 4)
    for r in reports:
        assert r.model is trainer.model
        assert list(r.loss) == list(trainer.term_names)
        np.testing.assert_array_equal(list(r.loss.values()), history[r.iteration - 1].numpy())
    assert 0 < reports[0].elapsed_s <= reports[1].elapsed_s <= reports[2].elapsed_s
    # Continuing: checkpoints are counted from the start of training, not from this call.
    trainer.train(30, checkpoints=[28], callback=reports.append)
    assert [r.iteration for r in reports] == [3, 10, 25, 28]
    assert trainer.history.shape == (30, 4)


@pytest.mark.parametrize(
    ("checkpoints", "match"),
    [
        ([5, 5], "strictly increasing"),
        ([8, 3], "strictly increasing"),
        ([2.5], "must be integers"),
        ([0, 4], r"must lie in \(0, 10\]"),
        ([4, 11], r"must lie in \(0, 10\]"),
    ],
)
def test_train_rejects_bad_checkpoints(tiny_train, checkpoints, match):
    trainer = _stage1_trainer(tiny_train)
    with pytest.raises(ValueError, match=match):
        trainer.train(10, checkpoints=checkpoints)
    assert trainer.iteration == 0


def test_train_cannot_go_back(tiny_train):
    trainer = _stage1_trainer(tiny_train)
    trainer.train(3)
    with pytest.raises(ValueError, match="cannot train back to iteration 2 from 3"):
        trainer.train(2)


def test_absurd_learning_rate_raises_divergence_error(tiny_train):
    trainer = _stage1_trainer(tiny_train, dtype=torch.float32, lr=1e6)
    with pytest.raises(DivergenceError, match="loss is not finite at iteration"):
        trainer.train(200, divergence_check_every=10)


def test_injected_nan_raises_divergence_error(tiny_train):
    trainer = _stage1_trainer(tiny_train)
    with torch.no_grad():
        trainer.model.encoder[0].weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match=r"loss is not finite at iteration 1: loss=nan"):
        trainer.train(5, divergence_check_every=1)


def test_residual_trainer_fits_and_is_seeded():
    # Seed 5: Z [2, 9, 3] -> target [2, 9, 12]; 50 Adam steps reduce the MSE; same seed, same net.
    rng = np.random.default_rng(5)
    Z = torch.as_tensor(rng.standard_normal((2, 9, 3)))
    target = torch.as_tensor(rng.standard_normal((2, 9, 12)))
    config = ResidualStageConfig(hidden=(8,), iters=50, lr=1e-2)
    trainer = ResidualTrainer.create(Z, target, config, seed=1)
    twin = copy.deepcopy(ResidualTrainer.create(Z, target, config, seed=1).model)
    for (_, a), (_, b) in zip(
        trainer.model.state_dict().items(), twin.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        expected = torch.mean((trainer.model(Z.reshape(-1, 3)) - target.reshape(-1, 12)) ** 2)
    (loss,) = trainer.gradients()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    trainer.train(50)
    history = trainer.history
    assert history.shape == (50, 1) and float(history[-1, 0]) < 0.9 * float(history[0, 0])


def test_cosine_schedule_endpoints_and_resume():
    """lr(0) = lr, lr(T/2) = (lr + lr/100) / 2, lr(T) = lr / 100; resume keeps the schedule."""
    torch.manual_seed(3)
    Z = torch.randn(2, 9, 3, dtype=torch.float64)
    target = torch.randn(2, 9, 16, dtype=torch.float64)
    config = ResidualStageConfig(hidden=(8,), iters=40, lr=2e-3, lr_schedule="cosine")
    trainer = ResidualTrainer.create(Z, target, config, seed=5)
    assert trainer.learning_rate(0) == pytest.approx(2e-3, rel=1e-15)
    assert trainer.learning_rate(20) == pytest.approx((2e-3 + 2e-5) / 2, rel=1e-12)
    assert trainer.learning_rate(40) == pytest.approx(2e-5, rel=1e-12)
    # Trained on past its schedule (a longer budget than ``iters``), it stays at the floor.
    assert trainer.learning_rate(60) == trainer.learning_rate(40)
    straight = ResidualTrainer.create(Z, target, config, seed=5)
    straight.train(40)
    trainer.train(20)
    resumed = ResidualTrainer.create(Z, target, config, seed=5)
    resumed.load_state_dict(trainer.state_dict())
    resumed.train(40)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_mlp_slices_are_plain_sequentials_sharing_the_layers():
    model = Autoencoder(12, (6,), 2)
    head = model.decoder[:-1]
    assert isinstance(head, torch.nn.Sequential) and len(head) == 2
    assert head[0] is model.decoder[0]
    z = torch.randn(3, 2)
    assert torch.equal(model.decoder[-1](head(z)), model.decode(z))


def test_float64_rom_round_trips_bit_for_bit(tiny_fit2_f64, tiny_oscillator, tmp_path):
    # The modules are made in the saved dtype before loading: loading float64 weights into the
    # float32 modules a constructor makes would round them to float32 (relative 1e-7).
    rom = tiny_fit2_f64.rom
    params, _, u0 = _inputs(tiny_oscillator)
    loaded = MultiStageROM.load(rom.save(tmp_path / "rom"), device="cpu")
    assert loaded.dtype == torch.float64
    for got, want in zip(
        [loaded.autoencoder, *loaded.residual_decoders],
        [rom.autoencoder, *rom.residual_decoders],
        strict=True,
    ):
        for name, value in want.state_dict().items():
            assert torch.equal(got.state_dict()[name], value), name
    # Predictions to round-off: the trained weights are strided views of one flat tensor, the
    # loaded ones contiguous, and the GEMMs may sum in another order.
    np.testing.assert_allclose(
        loaded.predict(params, u0).numpy(), rom.predict(params, u0).numpy(), rtol=1e-12, atol=1e-14
    )


def test_resolve_device_refuses_a_gpu_this_machine_lacks(monkeypatch):
    # The one device check of the library, the CLI and the Vlasov solver: a named GPU that is
    # not there is an input error (one line), not a failure deep inside torch.
    from mlasdi.config import ConfigError
    from mlasdi.rom import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="must be auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="has 1 CUDA device"):
        resolve_device("cuda:1")
