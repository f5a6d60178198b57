"""Pure network modules: MLP, stage-1 autoencoder, residual decoder with a sine first layer.

No optimiser, device policy or disk here: these are plain ``torch.nn.Module`` objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Sine(nn.Module):
    """x -> sin(kappa * x)."""

    def __init__(self, kappa: float = 1.0) -> None:
        super().__init__()
        self.kappa = float(kappa)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.kappa * x)

    def extra_repr(self) -> str:
        return f"kappa={self.kappa}"


def activation_module(name: str, *, kappa: float = 1.0) -> nn.Module:
    """The activation called ``name`` (see :data:`mlasdi.config.ACTIVATIONS`)."""
    table = {
        "softplus": nn.Softplus,
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "elu": nn.ELU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
    }
    if name == "sin":
        return Sine(kappa)
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted([*table, 'sin'])}")
    return table[name]()


_ATEN = torch.ops.aten

# grad * d act(pre) / d pre from the pre-activation and the output ``out`` = act(pre), by the
# kernels autograd itself runs for these modules (so hand-written backward passes give the same
# gradients bit for bit).
_BACKWARD = {
    nn.Softplus: lambda m, grad, pre, out: _ATEN.softplus_backward(grad, pre, m.beta, m.threshold),
    nn.Tanh: lambda m, grad, pre, out: _ATEN.tanh_backward(grad, out),
    nn.Sigmoid: lambda m, grad, pre, out: _ATEN.sigmoid_backward(grad, out),
    nn.ReLU: lambda m, grad, pre, out: _ATEN.threshold_backward(grad, out, 0),
    nn.ELU: lambda m, grad, pre, out: _ATEN.elu_backward(grad, m.alpha, 1, 1, False, pre),
    nn.GELU: lambda m, grad, pre, out: _ATEN.gelu_backward(grad, pre, approximate=m.approximate),
    nn.SiLU: lambda m, grad, pre, out: _ATEN.silu_backward(grad, pre),
    Sine: lambda m, grad, pre, out: grad * torch.cos(m.kappa * pre) * m.kappa,
}


def activation_backward(
    module: nn.Module, grad: torch.Tensor, pre: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """The gradient with respect to ``pre`` of an activation ``out = module(pre)`` given ``grad``
    with respect to ``out`` (for the hand-written backward pass in :mod:`mlasdi.train`)."""
    try:
        backward = _BACKWARD[type(module)]
    except KeyError:
        raise TypeError(f"no backward pass for activation module {module!r}") from None
    return backward(module, grad, pre, out)


class MLP(nn.Sequential):
    """Fully connected network ``widths[0] -> ... -> widths[-1]``.

    Hidden layers use ``activation``; the first hidden layer may use ``first_activation`` instead;
    the output layer is linear.
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: str,
        *,
        first_activation: str | None = None,
        kappa: float = 1.0,
    ) -> None:
        if len(widths) < 2:
            raise ValueError(f"an MLP needs at least input and output widths, got {list(widths)}")
        layers: list[nn.Module] = []
        n_layers = len(widths) - 1
        for i in range(n_layers):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < n_layers - 1:
                name = first_activation if (i == 0 and first_activation) else activation
                layers.append(activation_module(name, kappa=kappa))
        super().__init__(*layers)
        self.widths = tuple(int(w) for w in widths)

    def __getitem__(self, index: int | slice) -> nn.Module:
        # nn.Sequential rebuilds a slice with this class's constructor, whose arguments differ.
        if isinstance(index, slice):
            return nn.Sequential(*list(self)[index])
        return super().__getitem__(index)


class Autoencoder(nn.Module):
    """Stage 1: encoder ``n_state -> hidden -> latent`` and mirrored decoder.

    Shapes: ``encode`` [..., n_state] -> [..., latent_dim]; ``decode`` the reverse. The networks
    see standardised states: ``encode(u) = encoder((u - shift) / scale)`` and ``decode(z) = shift
    + scale * decoder(z)``, with buffers ``shift`` [n_state] and ``scale`` [] (0 and 1 unless
    :meth:`standardize` is called, which leaves every value exactly as the bare networks give).
    """

    def __init__(
        self, n_state: int, hidden: Sequence[int], latent_dim: int, activation: str = "softplus"
    ) -> None:
        super().__init__()
        if latent_dim >= n_state:
            raise ValueError(
                f"latent size {latent_dim} must be smaller than the state size {n_state}"
            )
        widths = [n_state, *hidden, latent_dim]
        self.encoder = MLP(widths, activation)
        self.decoder = MLP(widths[::-1], activation)
        self.n_state = int(n_state)
        self.latent_dim = int(latent_dim)
        self.register_buffer("shift", torch.zeros(n_state))
        self.register_buffer("scale", torch.ones(()))

    def standardize(self, shift: torch.Tensor, scale: torch.Tensor | float) -> None:
        """Set the physical-units map: state u = shift + scale * (what the networks see)."""
        self.shift.copy_(shift)
        self.scale.fill_(float(scale))

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        return self.encoder((u - self.shift) / self.scale)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, self.scale, self.decoder(z))

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (z, reconstruction)."""
        z = self.encode(u)
        return z, self.decode(z)


class ResidualDecoder(MLP):
    """Stage k >= 2 decoder: ``latent -> hidden -> n_state`` with sin(kappa (W z + b)) first."""

    def __init__(
        self,
        latent_dim: int,
        hidden: Sequence[int],
        n_state: int,
        *,
        kappa: float = 1.0,
        activation: str = "tanh",
    ) -> None:
        super().__init__(
            [latent_dim, *hidden, n_state], activation, first_activation="sin", kappa=kappa
        )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars in ``module``."""
    return sum(p.numel() for p in module.parameters())
