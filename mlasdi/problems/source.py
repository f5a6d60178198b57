"""The one interface behind every data source a study or ``mlasdi fit`` can name.

A data source is a frozen dataclass whose fields are the ``[data]`` keys it takes, with their
defaults (``time_stride`` and ``train_time_stride`` are common to all). It checks them
(:meth:`DataSource.check`, cheap: no solve, no snapshot read), knows the size of what it will give
without making it (:attr:`n_state`, :attr:`n_times`, :attr:`n_train_times`, :meth:`n_train`, for
``mlasdi-study plan``), makes or loads its :class:`~mlasdi.data.SnapshotSet` (:meth:`load`, cached
where it generates), gives its training split (:meth:`training_indices`) and initial conditions
(:meth:`initial_conditions`), and a seconds-long version of itself (:meth:`smoke`). A source whose
snapshots are in an HDF5 file names it (:attr:`snapshot_file`, made by :meth:`prepare`, rows
:meth:`file_rows`), so that a study can read a large test set from it in batches instead of
loading it (``studies/trial.py``). The registry in :mod:`mlasdi.problems` maps
``problem`` names to these classes; :func:`mlasdi.problems.data_source` builds one from a
``[data]`` table.

Errors are :class:`~mlasdi.config.ConfigError` (a key's value) or :class:`~mlasdi.data.DataError`
(a data file), one line each, naming the key or the file and what to do.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlasdi.config import ConfigError
from mlasdi.data import (
    DataError,
    SnapshotSet,
    cache_matches,
    inspect_snapshot_file,
    load_snapshot_set,
)

# Training points match a parameter to this relative tolerance (values typed in a spec against
# values computed by linspace differ by round-off).
MATCH_RTOL = 1e-9


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Base class of the data sources (see the module docstring for the contract).

    Subclasses set ``problem`` and add their own fields (keys); they must define
    :attr:`n_state`, :attr:`n_raw_times`, :meth:`n_train`, :meth:`load` and :meth:`training_indices`,
    and may extend :meth:`check` and override :meth:`smoke` and :meth:`initial_conditions`.
    """

    problem: ClassVar[str] = ""

    time_stride: int = 1
    train_time_stride: int = 1

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
        """Indices into ``data`` of the training parameters (>= 2). ``data`` is what :meth:`load`
        returns, or the same parameters at their first 3 times only (a study that reads its test
        set from :attr:`snapshot_file`): only ``data.params`` may be used."""
        raise NotImplementedError

    # ----- a source whose snapshots are in a file ------------------------------------------------
    @property
    def snapshot_file(self) -> Path | None:
        """The HDF5 snapshot file :meth:`load` reads (made by :meth:`prepare`); None (the
        default) where the snapshots are made in memory."""
        return None

    def prepare(self, *, progress: bool = True) -> None:
        """Make :attr:`snapshot_file` if it has to be made (generate the cache); by default
        nothing."""

    def file_rows(self) -> np.ndarray:
        """Rows of :attr:`snapshot_file` that :meth:`load` returns, in its order (default: all)."""
        path = self.snapshot_file
        if path is None:
            raise ValueError(f"problem {self.problem!r} has no snapshot file")
        return np.arange(inspect_snapshot_file(path).params.shape[0])

    # ----- shared behaviour --------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`ConfigError` naming the key when a value is invalid."""
        int_key(self.time_stride, "time_stride")
        if self.n_times < 3:
            raise ConfigError(
                f"data.time_stride = {self.time_stride} leaves {self.n_times} of "
                f"{self.n_raw_times} snapshots; need at least 3"
            )
        int_key(self.train_time_stride, "train_time_stride")
        if self.n_train_times < 3:
            raise ConfigError(
                f"data.train_time_stride = {self.train_time_stride} leaves {self.n_train_times} "
                f"of the {self.n_times} snapshots a study uses for training; need at least 3"
            )

    @property
    def n_times(self) -> int:
        """Snapshots per parameter a study uses (every ``time_stride``-th)."""
        return len(range(0, self.n_raw_times, self.time_stride))

    @property
    def n_train_times(self) -> int:
        """Snapshots per training parameter (every ``train_time_stride``-th of :attr:`n_times`)."""
        return len(range(0, self.n_times, self.train_time_stride))

    def initial_conditions(self, data: SnapshotSet) -> np.ndarray:
        """u0 [n_mu, *grid] of each parameter of ``data`` (as in :meth:`training_indices`): its
        first snapshot by default."""
        return data.snapshots[:, 0]

    def fingerprint(self, data: SnapshotSet, snapshots: Iterable[np.ndarray]) -> str:
        """A digest of the data where the keys do not determine it (a user's file can change
        under the same name); empty when they do. ``data`` is as in :meth:`training_indices`;
        ``snapshots`` yields the snapshots of every parameter of ``data``, all times, in batches
        of parameters. A study refuses to add rows to results made from data with another
        fingerprint."""
        return ""

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


def matches(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[m, n] bool: row i of ``values`` [m, n_p] equals row j of ``rows`` [n, n_p]."""
    scale = np.maximum(1.0, np.abs(rows))[None, :, :]
    return np.all(np.abs(values[:, None, :] - rows[None, :, :]) <= MATCH_RTOL * scale, axis=2)


def index_rows(index: Sequence[int], key: str, n_mu: int, where: str) -> np.ndarray:
    """``data.<key>``: distinct rows of the ``n_mu`` parameters of ``where``."""
    for i, value in enumerate(index):
        int_key(value, f"{key}[{i}]", 0)
    rows = np.asarray(index, dtype=np.int64)
    if rows.max() >= n_mu:
        raise ConfigError(
            f"data.{key} = {list(index)}: {where} has {n_mu} parameters (rows 0-{n_mu - 1})"
        )
    if np.unique(rows).size != rows.size:
        raise ConfigError(f"data.{key} lists a row twice: {list(index)}")
    return rows


def stride_rows(
    params: np.ndarray, names: Sequence[str], strides: Sequence[float], where: str
) -> np.ndarray:
    """Rows of ``params`` [n_mu, n_p] (a regular grid) on the sub-grid ``lo, lo + s, ..., hi``
    of every axis, first axis outermost; one stride for all axes or one per axis."""
    n_mu, n_p = params.shape
    strides = tuple(strides) * n_p if len(strides) == 1 else tuple(strides)
    if len(strides) != n_p or any(
        isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in strides
    ):
        raise ConfigError(
            f"data.train_stride must be one positive step in parameter units or {n_p} (one per "
            f"parameter {list(names)}), got {list(strides)}"
        )
    axes = [np.unique(params[:, j]) for j in range(n_p)]
    if int(np.prod([a.size for a in axes])) != n_mu:
        raise ConfigError(
            f"data.train_stride needs a regular parameter grid, but the {n_mu} parameters of "
            f"{where} are not the {' x '.join(str(a.size) for a in axes)} combinations of their "
            "values; use data.train_index or data.train_params"
        )
    targets = []
    for name, axis, step in zip(names, axes, strides, strict=True):
        lo, hi = axis[0], axis[-1]
        n = int(round((hi - lo) / step))
        if abs(lo + n * step - hi) > 1e-6 * max(1.0, abs(hi)):
            raise ConfigError(
                f"data.train_stride {step} does not divide the range [{lo:g}, {hi:g}] of "
                f"parameter {name}: the stride is a step in {name}'s own units along its axis; "
                f"{_strides_that_fit(axis)}"
            )
        points = lo + step * np.arange(n + 1)
        found = matches(points[:, None], axis[:, None])
        if not found.any(axis=1).all():
            bad = points[~found.any(axis=1)][0]
            raise ConfigError(
                f"data.train_stride {step}: {name} = {bad:g} is not on the grid of {where} "
                f"(values {axis.tolist()}); {_strides_that_fit(axis)}"
            )
        targets.append(axis[found.argmax(axis=1)])
    grid = np.array(list(itertools.product(*targets)), dtype=np.float64)
    return matches(grid, params).argmax(axis=1)


def _strides_that_fit(axis: np.ndarray) -> str:
    """The steps that select grid values of ``axis`` (sorted, regular) from end to end."""
    if axis.size < 2:
        return f"the axis has the one value {axis[0]:g}"
    spacing = (axis[-1] - axis[0]) / (axis.size - 1)
    fits = [
        f"{k * spacing:.6g}"
        for k in range(1, axis.size)
        if (axis.size - 1) % k == 0
        and np.allclose(axis[::k], axis[0] + k * spacing * np.arange(axis[::k].size))
    ]
    if not fits:
        return "no stride fits its values; use data.train_index or data.train_params"
    return f"strides that fit its values {axis.tolist()}: {', '.join(fits)}"


def training_rows(
    params: np.ndarray,
    names: Sequence[str],
    *,
    train_index: Sequence[int],
    train_params: Sequence[Sequence[float]],
    train_stride: Sequence[float],
    train_mask: np.ndarray | None,
    where: str,
) -> np.ndarray:
    """Rows of ``params`` [n_mu, n_p] that are training parameters (>= 2): ``train_index``, else
    ``train_params`` (each must match a row), else ``train_stride`` on a regular grid, else
    ``train_mask``, the first that is given. ``where`` names the parameters in messages."""
    n_mu, n_p = params.shape
    if len(train_index):
        rows, how = index_rows(train_index, "train_index", n_mu, where), "data.train_index"
    elif len(train_params):
        for i, point in enumerate(train_params):
            if len(point) != n_p:
                raise ConfigError(
                    f"data.train_params[{i}] = {list(point)} has {len(point)} values; {where} "
                    f"has {n_p} parameters {list(names)}"
                )
        close = matches(np.asarray(train_params, dtype=np.float64), params)
        missing = np.flatnonzero(~close.any(axis=1))
        if missing.size:
            i = int(missing[0])
            raise ConfigError(
                f"data.train_params[{i}] = {list(train_params[i])} is not a parameter of {where} "
                f"({n_mu} parameters {list(names)}, from {params.min(axis=0).tolist()} to "
                f"{params.max(axis=0).tolist()}); use values from its parameters"
            )
        rows, how = close.argmax(axis=1), "data.train_params"
        if np.unique(rows).size != rows.size:
            raise ConfigError(f"data.train_params lists a parameter twice: {list(train_params)}")
    elif len(train_stride):
        rows, how = stride_rows(params, names, train_stride, where), "data.train_stride"
    elif train_mask is not None:
        rows, how = np.flatnonzero(train_mask), f"the train dataset of {where}"
    else:
        raise ConfigError(
            f"no training parameters for {where}: set data.train_index, data.train_params or "
            "data.train_stride, or store a boolean train dataset in the file"
        )
    if rows.size < 2:
        raise ConfigError(
            f"{how} gives {rows.size} training parameter(s) of {where}; at least 2 are needed "
            "(the latent dynamics coefficients are interpolated between them)"
        )
    return rows


def stride_tuple(stride: Any) -> tuple:
    return tuple(stride) if isinstance(stride, (list, tuple)) else (stride,)


# Keys of a generated grid that do not change its snapshot file.
_NOT_SETTINGS = (
    "time_stride",
    "train_time_stride",
    "train_index",
    "train_params",
    "train_stride",
    "file",
    "generate",
)


@dataclasses.dataclass(frozen=True)
class GeneratedGrid(DataSource):
    """A solver's snapshot set on a parameter grid, generated once into an HDF5 file and reused
    while its settings and parameters match (the pattern of :class:`~mlasdi.problems.vlasov.
    VlasovData`).

    Keys: ``grid`` (points per parameter axis), the training split ``train_index``,
    ``train_params``, ``train_stride`` (the precedence of :func:`training_rows`, resolved on the
    grid without solving), ``file`` (default ``data/<default_file()>`` under the current
    directory) and ``generate`` (false: the file must exist).

    A subclass sets ``problem``, ``param_names`` and ``n_grid_axes``, adds its solver keys, and
    defines :meth:`parameters`, :meth:`stored_settings`, :meth:`generate_file`,
    :meth:`default_file`, :attr:`n_state` and :attr:`n_raw_times`.
    """

    param_names: ClassVar[tuple[str, ...]] = ()
    n_grid_axes: ClassVar[int] = 2

    grid: tuple[int, ...] = ()
    train_index: tuple[int, ...] = ()
    train_params: tuple[tuple[float, ...], ...] = ()
    train_stride: float | tuple[float, ...] = ()
    file: str = ""
    generate: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_stride", stride_tuple(self.train_stride))

    # ----- what a generated problem provides ---------------------------------------------------
    def parameters(self) -> np.ndarray:
        """[n_mu, n_p] the parameters of ``grid``."""
        raise NotImplementedError

    def stored_settings(self) -> Mapping[str, Any]:
        """The ``settings`` attribute its files hold (the cache key, with the parameters)."""
        raise NotImplementedError

    def generate_file(self, path: Path, *, progress: bool) -> None:
        """Write (or finish, or reuse) the snapshot file ``path`` for :meth:`parameters`."""
        raise NotImplementedError

    def default_file(self) -> str:
        """The cache file's name under ``data/`` when ``file`` is not given."""
        raise NotImplementedError

    # ----- shared behaviour ----------------------------------------------------------------------
    @property
    def path(self) -> Path:
        if self.file:
            return Path(self.file).expanduser().resolve()
        return (Path("data") / self.default_file()).resolve()

    def _train_rows(self) -> np.ndarray:
        return training_rows(
            self.parameters(),
            self.param_names,
            train_index=self.train_index,
            train_params=self.train_params,
            train_stride=self.train_stride,  # type: ignore[arg-type]
            train_mask=None,
            where=f"the {self.problem} grid {list(self.grid)}",
        )

    def n_train(self) -> int:
        return int(self._train_rows().size)

    def check(self) -> None:
        grid_key(self.grid, "grid", self.n_grid_axes, self.problem)
        bool_key(self.generate, "generate")
        if not isinstance(self.file, str):
            raise ConfigError(f"data.file must be a path string, got {self.file!r}")
        super().check()
        self._train_rows()
        path = self.path
        if not self.generate and not path.is_file():
            raise ConfigError(
                f"data file {path} does not exist (data.generate = false); generate it with "
                f"'mlasdi data {self.problem}' or set data.generate = true"
            )
        settings, params = self.stored_settings(), self.parameters()
        partial = path.with_name(path.name + ".partial")
        try:
            stale = path.exists() and not cache_matches(path, settings, params)
            stale_partial = partial.exists() and not cache_matches(
                partial, settings, params, complete=False
            )
        except DataError as exc:
            raise DataError(f"{exc} or point data.file at another path") from None
        fix = "delete it or point data.file at another path"
        if stale:
            keys = ", ".join(
                f"{f.name} {_lists(getattr(self, f.name))}"
                for f in dataclasses.fields(self)
                if f.name not in _NOT_SETTINGS
            )
            raise DataError(
                f"{path} holds a snapshot set with other settings or parameters than [data] "
                f"asks for ({keys}); {fix}"
            )
        if stale_partial:
            raise DataError(f"{partial} is an interrupted generation with other settings; {fix}")

    @property
    def snapshot_file(self) -> Path:
        return self.path

    def prepare(self, *, progress: bool = True) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.generate_file(path, progress=progress)

    def load(self, *, progress: bool = True) -> SnapshotSet:
        self.prepare(progress=progress)
        return load_snapshot_set(self.path)

    def training_indices(self, data: SnapshotSet) -> np.ndarray:
        return data.index_of(self.parameters()[self._train_rows()], atol=0.0)
