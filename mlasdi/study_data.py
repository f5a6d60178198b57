"""The arrays a study (or ``mlasdi fit``) trains and tests on, loaded from a data source once.

:class:`StudyData` holds the training snapshots and, for the test set, either the snapshots or a
:class:`~mlasdi.data.SnapshotReader` of the source's file (read a batch at a time where they
are larger than :data:`LAZY_TRUTH_BYTES`): a large file is never loaded whole.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlasdi.data import (
    SnapshotReader,
    SnapshotSet,
    default_param_names,
    flatten_grid,
    inspect_snapshot_file,
    iter_snapshot_rows,
    load_snapshot_set,
)
from mlasdi.problems.source import DataSource
from mlasdi.rom import MultiStageROM, evaluate

# A test truth larger than this (float32) is read from the data source's snapshot file a batch
# at a time in each trial instead of being loaded and shipped through the object store.
LAZY_TRUTH_BYTES = 256 * 2**20


@dataclass
class StudyData:
    """Arrays every trial needs, shared read-only through the object store.

    U_train : float32 [n_train, n_t_train, n_state] training snapshots, at ``times``
    [n_t_train] (every ``train_time_stride``-th of ``times_test``); params_train : [n_train, n_p].
    params_test : [n_test, n_p]; truth_test : float32 [n_test, n_t, n_state] at ``times_test``
    [n_t] (every test point, training points included): an array, or a
    :class:`~mlasdi.data.SnapshotReader` of the source's file when larger than
    :data:`LAZY_TRUTH_BYTES`; is_train : bool [n_test]; u0_test : float32 [n_test, n_state] the
    initial conditions the predictions start from (the data source's); fingerprint : the
    source's digest of the data (empty where the spec's keys determine them); param_names,
    coords and grid_shape : the labels of the parameters and the state's grid (for figures).
    """

    U_train: np.ndarray
    params_train: np.ndarray
    times: np.ndarray
    params_test: np.ndarray
    truth_test: np.ndarray | SnapshotReader
    is_train: np.ndarray
    u0_test: np.ndarray
    times_test: np.ndarray
    fingerprint: str = ""
    param_names: tuple[str, ...] = ()  # the source's names of the n_p parameters
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    grid_shape: tuple[int, ...] = ()

    @property
    def n_state(self) -> int:
        return int(self.U_train.shape[-1])

    def check_truth(self) -> None:
        """Raise :class:`~mlasdi.data.DataError` if the test truth cannot be read here (a
        reader's file is not at its path on this node)."""
        if isinstance(self.truth_test, SnapshotReader):
            self.truth_test.check()

    def train_set(self) -> SnapshotSet:
        """The training snapshots as a :class:`~mlasdi.data.SnapshotSet` (what
        :func:`mlasdi.fit.fit_rom` trains on)."""
        return SnapshotSet(
            params=self.params_train,
            times=self.times,
            snapshots=self.U_train,
            param_names=self.param_names or default_param_names(self.params_train.shape[1]),
        )

    def test_errors(self, rom: MultiStageROM, batch_size: int = 32) -> np.ndarray:
        """Per-time relative errors [n_stages, n_test, n_t] of ``rom`` at every test parameter
        and test time, from the source's initial conditions (:func:`mlasdi.rom.evaluate`, a
        batch of ``batch_size`` parameters at a time)."""
        return evaluate(
            rom,
            self.params_test,
            self.truth_test,
            u0=self.u0_test,
            times=self.times_test,
            batch_size=batch_size,
        )


def _is_train(n: int, train_index: np.ndarray) -> np.ndarray:
    if train_index.size < 2 or np.any(train_index < 0):
        raise ValueError(f"need at least two training points inside the test grid: {train_index}")
    is_train = np.zeros(n, dtype=bool)
    is_train[train_index] = True
    return is_train


def _study_data(
    data: SnapshotSet, train_index: np.ndarray, source: DataSource, u0: np.ndarray
) -> StudyData:
    train_index = np.asarray(train_index, dtype=np.int64)
    is_train = _is_train(data.params.shape[0], train_index)
    subset = data.every(source.time_stride)
    truth = subset.flat_snapshots().astype(np.float32)
    every = slice(None, None, source.train_time_stride)
    return StudyData(
        U_train=np.ascontiguousarray(truth[train_index, every]),
        params_train=subset.params[train_index],
        times=subset.times[every],
        params_test=subset.params,
        truth_test=truth,
        is_train=is_train,
        u0_test=flatten_grid(u0, len(data.grid_shape)).astype(np.float32),
        times_test=subset.times,
        param_names=data.param_names,
        coords=dict(data.coords),
        grid_shape=data.grid_shape,
    )


def _lazy_study_data(source: DataSource, path: Path, rows: np.ndarray) -> StudyData:
    """The study data of a source whose test truth is read from ``path`` in each trial: only the
    header, the first snapshots (initial conditions) and the training snapshots are loaded here.
    Every snapshot is still read once, batch by batch, to check it (and hash it where the source
    fingerprints its data), as :meth:`~mlasdi.problems.source.DataSource.load` would. ``rows``
    are the source's :meth:`~mlasdi.problems.source.DataSource.file_rows`."""
    head = load_snapshot_set(path, indices=rows, time_slice=slice(0, 3))
    train_index = np.asarray(source.training_indices(head), dtype=np.int64)
    is_train = _is_train(rows.size, train_index)
    scan = iter_snapshot_rows(path, rows)
    fingerprint = source.fingerprint(head, scan)
    collections.deque(scan, maxlen=0)  # check what the fingerprint did not read
    stride = source.time_stride * source.train_time_stride
    train = load_snapshot_set(path, indices=rows[train_index], time_slice=slice(None, None, stride))
    times_test = inspect_snapshot_file(path).times[:: source.time_stride]
    return StudyData(
        U_train=train.flat_snapshots().astype(np.float32),
        params_train=train.params,
        times=train.times,
        params_test=head.params,
        truth_test=SnapshotReader(
            str(path),
            tuple(int(i) for i in rows),
            source.time_stride,
            times_test.size,
            head.grid_shape,
        ),
        is_train=is_train,
        u0_test=flatten_grid(source.initial_conditions(head), len(head.grid_shape)).astype(
            np.float32
        ),
        times_test=times_test,
        fingerprint=fingerprint,
        param_names=head.param_names,
        coords=dict(head.coords),
        grid_shape=head.grid_shape,
    )


def load_study_data(source: DataSource, *, progress: bool = True) -> StudyData:
    """Load (or generate, cached) the snapshots of a data source (a study spec's ``data``) and
    split them (a study's driver side; ``mlasdi fit --data``).

    A test truth of more than :data:`LAZY_TRUTH_BYTES` (float32) in the source's snapshot file
    stays there (:func:`_lazy_study_data`); otherwise everything is loaded.

    Raises :class:`~mlasdi.data.DataError` naming the file when the data are bad.
    """
    source.prepare(progress=progress)
    path = source.snapshot_file
    if path is not None:
        rows = source.file_rows()
        if rows.size * source.n_times * source.n_state * 4 > LAZY_TRUTH_BYTES:
            return _lazy_study_data(source, path, rows)
    data = source.load(progress=progress)
    study = _study_data(
        data, source.training_indices(data), source, source.initial_conditions(data)
    )
    study.fingerprint = source.fingerprint(data, [data.snapshots])
    return study
