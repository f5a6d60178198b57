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
import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from mlasdi.config import ConfigError
from mlasdi.data import DataError, SnapshotFileInfo, SnapshotSet, inspect_snapshot_file
from mlasdi.data import load_snapshot_set as _load
from mlasdi.problems.source import (
    DataSource,
    index_rows,
    stride_tuple,
    training_rows,
)

SMOKE_TIMES = 11


# Keyed by modification time and size too, so a file rewritten in place is inspected anew.
@functools.lru_cache(maxsize=8)
def _info(path: str, mtime_ns: int, size: int) -> SnapshotFileInfo:
    return inspect_snapshot_file(path)


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
        object.__setattr__(self, "train_stride", stride_tuple(self.train_stride))

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
        return index_rows(self.use_index, "use_index", n_mu, str(self.path))

    def _train_rows(self, info: SnapshotFileInfo) -> np.ndarray:
        """Rows of the file that are training parameters, by the precedence of the module doc."""
        rows = training_rows(
            info.params,
            info.param_names,
            train_index=self.train_index,
            train_params=self.train_params,
            train_stride=self.train_stride,  # type: ignore[arg-type]
            train_mask=info.train,
            where=str(self.path),
        )
        outside = np.setdiff1d(rows, self._used(info))
        if outside.size:
            raise ConfigError(
                f"training rows {outside.tolist()} of {self.path} are not in data.use_index "
                f"{list(self.use_index)}"
            )
        return rows

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

    @property
    def snapshot_file(self) -> Path:
        return self.path

    def file_rows(self) -> np.ndarray:
        return self._used(self.info())

    def fingerprint(self, data: SnapshotSet, snapshots: Iterable[np.ndarray]) -> str:
        """sha256 of the parameters, times and snapshots used (and the file's training split),
        each array hashed as its dtype, shape and C-order bytes (the snapshots batch by batch)."""
        info = self.info()
        batches = iter(snapshots)
        first = next(batches)
        shape = (data.params.shape[0], info.times.size, *info.grid_shape)
        digest = hashlib.sha256()
        for array in (data.params, info.times):
            _hash(digest, array.dtype, array.shape, [array])
        _hash(digest, first.dtype, shape, itertools.chain([first], batches))
        index = self.training_indices(data)
        _hash(digest, index.dtype, index.shape, [index])
        return digest.hexdigest()

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


def _hash(
    digest: hashlib._Hash, dtype: np.dtype, shape: tuple, parts: Iterable[np.ndarray]
) -> None:
    digest.update(f"{dtype}{tuple(int(n) for n in shape)}".encode())
    for part in parts:
        digest.update(memoryview(np.ascontiguousarray(part)).cast("B"))
