"""The one interface behind every data source a study or ``mlasdi fit`` can name.

A data source is a frozen dataclass whose fields are the ``[data]`` keys it takes, with their
defaults (``time_stride`` is common to all). It checks them (:meth:`DataSource.check`, cheap: no
solve, no snapshot read), knows the size of what it will give without making it (:attr:`n_state`,
:attr:`n_times`, :meth:`n_train`, for ``mlasdi-study plan``), makes or loads its
:class:`~mlasdi.data.SnapshotSet` (:meth:`load`, cached where it generates), gives its training
split (:meth:`training_indices`) and initial conditions (:meth:`initial_conditions`), and a
seconds-long version of itself (:meth:`smoke`). The registry in :mod:`mlasdi.problems` maps
``problem`` names to these classes; :func:`mlasdi.problems.data_source` builds one from a
``[data]`` table.

Errors are :class:`~mlasdi.config.ConfigError` (a key's value) or :class:`~mlasdi.data.DataError`
(a data file), one line each, naming the key or the file and what to do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from mlasdi.config import ConfigError
from mlasdi.data import SnapshotSet


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Base class of the data sources (see the module docstring for the contract).

    Subclasses set ``problem`` and add their own fields (keys); they must define
    :attr:`n_state`, :attr:`n_raw_times`, :meth:`n_train`, :meth:`load` and :meth:`training_indices`,
    and may extend :meth:`check` and override :meth:`smoke` and :meth:`initial_conditions`.
    """

    problem: ClassVar[str] = ""

    time_stride: int = 1

    # ----- what a subclass provides ----------------------------------------------------------
    @property
    def n_state(self) -> int:
        """Values per snapshot (the product of the grid shape)."""
        raise NotImplementedError

    @property
    def n_raw_times(self) -> int:
        """Snapshots per parameter before ``time_stride``."""
        raise NotImplementedError

    def n_train(self) -> int:
        """Number of training parameters (without making the data)."""
        raise NotImplementedError

    def load(self, *, progress: bool = True) -> SnapshotSet:
        """Every parameter's snapshots, all times (``time_stride`` is applied by the caller)."""
        raise NotImplementedError

    def training_indices(self, data: SnapshotSet) -> np.ndarray:
        """Indices into ``data`` (from :meth:`load`) of the training parameters (>= 2)."""
        raise NotImplementedError

    # ----- shared behaviour --------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`ConfigError` naming the key when a value is invalid."""
        int_key(self.time_stride, "time_stride")
        if self.n_times < 3:
            raise ConfigError(
                f"data.time_stride = {self.time_stride} leaves {self.n_times} of "
                f"{self.n_raw_times} snapshots; need at least 3"
            )

    @property
    def n_times(self) -> int:
        """Snapshots per parameter a study uses (every ``time_stride``-th)."""
        return len(range(0, self.n_raw_times, self.time_stride))

    def initial_conditions(self, data: SnapshotSet) -> np.ndarray:
        """u0 [n_mu, *grid] of each parameter of ``data``: its first snapshot by default."""
        return data.snapshots[:, 0]

    def smoke(self) -> DataSource:
        """A version of this source that a seconds-long study can use (default: itself)."""
        return self

    def to_dict(self) -> dict[str, Any]:
        """The ``[data]`` table (TOML-ready: lists, not tuples) that rebuilds this source."""
        out: dict[str, Any] = {"problem": self.problem}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = _lists(value)
        return out


def _lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_lists(v) for v in value]
    return value


def int_key(value: Any, key: str, minimum: int = 1) -> int:
    """``value`` of ``data.<key>`` as an integer >= ``minimum`` (else :class:`ConfigError`)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"data.{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def bool_key(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"data.{key} must be true or false, got {value!r}")
    return value


def grid_key(value: Sequence[int], key: str, n_axes: int, problem: str) -> None:
    """``data.<key>``: ``n_axes`` grid sizes >= 2."""
    for i, n in enumerate(value):
        int_key(n, f"{key}[{i}]", 2)
    if len(value) != n_axes:
        raise ConfigError(
            f"data.{key} must have {n_axes} entr{'y' if n_axes == 1 else 'ies'} for {problem}"
        )
