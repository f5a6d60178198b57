"""``problem = "file"``: a user's own snapshot set, read from the documented HDF5 format.

Any number of parameters and any grid shape (:mod:`mlasdi.data`; make a file with
``mlasdi data import --npz`` or :func:`mlasdi.data.save_snapshot_set`). The training parameters
are chosen by the first of these that is given (docs/data.md):

1. ``train_index = [i, ...]``: rows of the file's ``params``;
2. ``train_params = [[...], ...]``: parameter values, each matching one row of the file;
3. ``train_stride = s`` (or one stride per parameter) on a regular (tensor) parameter grid:
   every parameter ``lo, lo + s, ..., hi`` along each axis;
4. the file's boolean ``train`` dataset.

Every other parameter of the file is a test parameter; each trajectory's initial condition is its
first snapshot. ``use_index`` restricts the study to some rows of the file (the smoke version uses
it); ``train_index`` still counts rows of the whole file.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from mlasdi.config import ConfigError
from mlasdi.data import DataError, SnapshotFileInfo, SnapshotSet, inspect_snapshot_file
from mlasdi.data import load_snapshot_set as _load
from mlasdi.problems.source import DataSource, int_key

# Training points match a file parameter to this relative tolerance (values typed in a spec
# against values computed by linspace differ by round-off).
MATCH_RTOL = 1e-9
SMOKE_TIMES = 11


@functools.lru_cache(maxsize=8)
def _info(path: str, mtime_ns: int, size: int) -> SnapshotFileInfo:
    return inspect_snapshot_file(path)


def _matches(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[m, n] bool: row i of ``values`` [m, n_p] equals row j of ``rows`` [n, n_p]."""
    scale = np.maximum(1.0, np.abs(rows))[None, :, :]
    return np.all(np.abs(values[:, None, :] - rows[None, :, :]) <= MATCH_RTOL * scale, axis=2)


@dataclass(frozen=True)
class FileData(DataSource):
    """``problem = "file"`` (or no ``problem``): ``file`` and the training split (module doc)."""

    problem: ClassVar[str] = "file"

    file: str = ""
    train_index: tuple[int, ...] = ()
    train_params: tuple[tuple[float, ...], ...] = ()
    train_stride: float | tuple[float, ...] = ()
    use_index: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # one stride for every parameter, or one per parameter: stored as a tuple either way
        stride = self.train_stride
        stride = tuple(stride) if isinstance(stride, (list, tuple)) else (stride,)
        object.__setattr__(self, "train_stride", stride)

    @property
    def path(self) -> Path:
        return Path(self.file).expanduser().resolve()

    def info(self) -> SnapshotFileInfo:
        """The file's checked header (cached while the file is unchanged)."""
        path = self.path
        if not path.is_file():
            raise DataError(f"data file {path} does not exist (data.file = {self.file!r})")
        stat = path.stat()
        return _info(str(path), stat.st_mtime_ns, stat.st_size)

    @property
    def n_state(self) -> int:
        return self.info().n_state

    @property
    def n_raw_times(self) -> int:
        return int(self.info().times.size)

    def _used(self, info: SnapshotFileInfo) -> np.ndarray:
        n_mu = info.params.shape[0]
        if not self.use_index:
            return np.arange(n_mu)
        return self._rows(self.use_index, "use_index", n_mu)

    def _rows(self, index: tuple[int, ...], key: str, n_mu: int) -> np.ndarray:
        for i, value in enumerate(index):
            int_key(value, f"{key}[{i}]", 0)
        rows = np.asarray(index, dtype=np.int64)
        if rows.max() >= n_mu:
            raise ConfigError(
                f"data.{key} = {list(index)}: {self.path} has {n_mu} parameters (rows 0-{n_mu - 1})"
            )
        if np.unique(rows).size != rows.size:
            raise ConfigError(f"data.{key} lists a row twice: {list(index)}")
        return rows

    def _train_rows(self, info: SnapshotFileInfo) -> np.ndarray:
        """Rows of the file that are training parameters, by the precedence of the module doc."""
        params, n_mu = info.params, info.params.shape[0]
        n_p = params.shape[1]
        if self.train_index:
            rows, how = self._rows(self.train_index, "train_index", n_mu), "data.train_index"
        elif self.train_params:
            points = []
            for i, point in enumerate(self.train_params):
                if len(point) != n_p:
                    raise ConfigError(
                        f"data.train_params[{i}] = {list(point)} has {len(point)} values; "
                        f"{self.path} has {n_p} parameters {list(info.param_names)}"
                    )
                points.append(point)
            close = _matches(np.asarray(points, dtype=np.float64), params)
            missing = np.flatnonzero(~close.any(axis=1))
            if missing.size:
                i = int(missing[0])
                raise ConfigError(
                    f"data.train_params[{i}] = {list(self.train_params[i])} is not a parameter of "
                    f"{self.path} ({n_mu} parameters {list(info.param_names)}, from "
                    f"{params.min(axis=0).tolist()} to {params.max(axis=0).tolist()}); use values "
                    "from its params dataset"
                )
            rows, how = close.argmax(axis=1), "data.train_params"
        elif self.train_stride:
            rows, how = self._stride_rows(info), "data.train_stride"
        elif info.train is not None:
            rows, how = np.flatnonzero(info.train), f"the train dataset of {self.path}"
        else:
            raise ConfigError(
                f"no training parameters for {self.path}: set data.train_index, "
                "data.train_params or data.train_stride, or store a boolean train dataset in "
                "the file"
            )
        used = self._used(info)
        outside = np.setdiff1d(rows, used)
        if outside.size:
            raise ConfigError(
                f"{how}: training rows {outside.tolist()} are not in data.use_index {list(used)}"
            )
        if rows.size < 2:
            raise ConfigError(
                f"{how} gives {rows.size} training parameter(s) of {self.path}; at least 2 are "
                "needed (the latent dynamics coefficients are interpolated between them)"
            )
        return rows

    def _stride_rows(self, info: SnapshotFileInfo) -> np.ndarray:
        params = info.params
        n_mu, n_p = params.shape
        strides = tuple(self.train_stride)  # type: ignore[arg-type]
        if len(strides) == 1:
            strides = strides * n_p
        if len(strides) != n_p or any(
            isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in strides
        ):
            raise ConfigError(
                f"data.train_stride must be one positive number or {n_p} (one per parameter "
                f"{list(info.param_names)}), got {list(self.train_stride)}"
            )
        axes = [np.unique(params[:, j]) for j in range(n_p)]
        if int(np.prod([a.size for a in axes])) != n_mu:
            raise ConfigError(
                f"data.train_stride needs a regular parameter grid, but the {n_mu} parameters of "
                f"{self.path} are not the {' x '.join(str(a.size) for a in axes)} combinations of "
                "their values; use data.train_index or data.train_params"
            )
        targets = []
        for j, (axis, step) in enumerate(zip(axes, strides, strict=True)):
            lo, hi = axis[0], axis[-1]
            n = int(round((hi - lo) / step))
            if abs(lo + n * step - hi) > MATCH_RTOL * max(1.0, abs(hi)) * 1e3:
                raise ConfigError(
                    f"data.train_stride {step} does not divide the range [{lo:g}, {hi:g}] of "
                    f"parameter {info.param_names[j]}"
                )
            points = lo + step * np.arange(n + 1)
            found = _matches(points[:, None], axis[:, None])
            if not found.any(axis=1).all():
                bad = points[~found.any(axis=1)][0]
                raise ConfigError(
                    f"data.train_stride {step}: {info.param_names[j]} = {bad:g} is not on the "
                    f"grid of {self.path} (values {axis.tolist()})"
                )
            targets.append(axis[found.argmax(axis=1)])
        grid = np.array(list(itertools.product(*targets)), dtype=np.float64)
        return _matches(grid, params).argmax(axis=1)

    def check(self) -> None:
        if not isinstance(self.file, str) or not self.file:
            raise ConfigError('data.file must name the snapshot file, e.g. file = "data/my.h5"')
        info = self.info()
        super().check()
        self._used(info)
        self._train_rows(info)

    def n_train(self) -> int:
        return int(self._train_rows(self.info()).size)

    def load(self, *, progress: bool = True) -> SnapshotSet:
        info = self.info()
        return _load(self.path, indices=self._used(info))

    def training_indices(self, data: SnapshotSet) -> np.ndarray:
        info = self.info()
        return data.index_of(info.params[self._train_rows(info)], atol=0.0)

    def smoke(self) -> FileData:
        """Two training and up to two test parameters of the file, about 11 snapshots."""
        info = self.info()
        train = self._train_rows(info)[:2]
        test = np.setdiff1d(self._used(info), train)[:2]
        stride = max(self.time_stride, -(-(info.times.size - 1) // (SMOKE_TIMES - 1)))
        return replace(
            self,
            train_index=tuple(int(i) for i in train),
            train_params=(),
            train_stride=(),
            use_index=tuple(sorted(int(i) for i in (*train, *test))),
            time_stride=min(stride, (info.times.size - 1) // 2),
        )
