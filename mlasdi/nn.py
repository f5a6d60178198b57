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

    Shapes: ``encode`` [..., n_state] -> [..., latent_dim]; ``decode`` the reverse.
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

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        return self.encoder(u)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (z, reconstruction)."""
        z = self.encoder(u)
        return z, self.decoder(z)


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
