"""Snapshot sets: full-order data u(t; mu) on a grid, in memory and in HDF5.

Layout (DESIGN.md): ``snapshots`` [n_mu, n_t, *grid], ``params`` [n_mu, n_p], ``times`` [n_t], one
coordinate array per grid axis, and attributes for parameter names, problem settings (JSON) and the
format version.

Flattening to a state vector uses one rule everywhere (:meth:`SnapshotSet.flat_snapshots`): the
first grid axis varies fastest (Fortran order over the grid axes). For the Vlasov grid
[N_x, N_v] this is HyPar's and the paper's order, ``vec = U[n].T.reshape(-1)``.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from filelock import FileLock

FORMAT_VERSION = 1


class DataError(ValueError):
    """Snapshot data or a snapshot file is malformed."""


def flatten_grid(fields: np.ndarray, n_grid_axes: int) -> np.ndarray:
    """[..., *grid] -> [..., n_state] with the first grid axis fastest."""
    lead = fields.shape[: fields.ndim - n_grid_axes]
    order = list(range(len(lead))) + list(range(fields.ndim - 1, len(lead) - 1, -1))
    return np.ascontiguousarray(fields.transpose(order)).reshape(*lead, -1)


def check_finite(snapshots: np.ndarray, first: int = 0) -> None:
    """Raise :class:`DataError` naming the parameters (row ``first`` is index ``first``) whose
    snapshots [n, n_t, *grid] hold NaN or Inf."""
    if not np.all(np.isfinite(snapshots)):
        bad = np.flatnonzero(~np.isfinite(snapshots.reshape(snapshots.shape[0], -1)).all(axis=1))
        raise DataError(
            f"snapshots contain NaN or Inf (parameter indices {(bad[:10] + first).tolist()})"
        )


def default_param_names(n_p: int) -> tuple[str, ...]:
    """Names of ``n_p`` parameters whose source gives none: ``p0``, ``p1``, ..."""
    return tuple(f"p{i}" for i in range(n_p))


@dataclass(frozen=True)
class SnapshotSet:
    """Full-order snapshots for a set of parameters.

    Attributes
    ----------
    params : [n_mu, n_p] parameter values.
    times : [n_t] snapshot times, increasing and uniformly spaced.
    snapshots : [n_mu, n_t, *grid] solution values.
    param_names : names of the n_p parameters.
    coords : one coordinate array per grid axis, by axis name (insertion order = axis order).
    settings : problem settings (JSON-serialisable), stored with the data to detect stale caches.
    """

    params: np.ndarray
    times: np.ndarray
    snapshots: np.ndarray
    param_names: tuple[str, ...]
    coords: Mapping[str, np.ndarray] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        params = np.asarray(self.params, dtype=np.float64)
        times = np.asarray(self.times, dtype=np.float64)
        snapshots = np.asarray(self.snapshots)
        if params.ndim != 2:
            raise DataError(f"params must have shape [n_mu, n_p], got {params.shape}")
        if times.ndim != 1 or times.size < 3:
            raise DataError(f"times must be 1-D with at least 3 entries, got shape {times.shape}")
        if snapshots.ndim < 3:
            raise DataError(
                f"snapshots must have shape [n_mu, n_t, *grid] (rank >= 3), got rank {snapshots.ndim} "
                f"with shape {snapshots.shape}"
            )
        if snapshots.shape[0] != params.shape[0]:
            raise DataError(
                f"snapshots has {snapshots.shape[0]} parameters but params has {params.shape[0]}"
            )
        if snapshots.shape[1] != times.size:
            raise DataError(f"snapshots has {snapshots.shape[1]} times but times has {times.size}")
        if len(self.param_names) != params.shape[1]:
            raise DataError(
                f"{len(self.param_names)} parameter names for {params.shape[1]} parameters"
            )
        check_finite(snapshots)
        steps = np.diff(times)
        if np.any(steps <= 0) or not np.allclose(steps, steps[0], rtol=1e-6, atol=0):
            raise DataError("times must be increasing and uniformly spaced")
        if self.coords and len(self.coords) != snapshots.ndim - 2:
            raise DataError(
                f"{len(self.coords)} coordinate arrays for {snapshots.ndim - 2} grid axes"
            )
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "snapshots", snapshots)
        object.__setattr__(self, "param_names", tuple(self.param_names))

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(self.snapshots.shape[2:])

    @property
    def n_state(self) -> int:
        return int(np.prod(self.grid_shape))

    @property
    def dt(self) -> float:
        return float(self.times[1] - self.times[0])

    def file_layout(self) -> dict[str, Any]:
        """The :class:`SnapshotFileWriter` arguments that describe this set's file."""
        return {
            "params": self.params,
            "times": self.times,
            "grid_shape": self.grid_shape,
            "param_names": self.param_names,
            "coords": self.coords,
            "settings": self.settings,
        }

    def flat_snapshots(self) -> np.ndarray:
        """[n_mu, n_t, n_state], first grid axis fastest (see module docstring)."""
        return flatten_grid(self.snapshots, len(self.grid_shape))

    def every(self, time_stride: int) -> SnapshotSet:
        """The snapshot set at every ``time_stride``-th time (1: itself)."""
        if time_stride == 1:
            return self
        return SnapshotSet(
            params=self.params,
            times=self.times[::time_stride],
            snapshots=self.snapshots[:, ::time_stride],
            param_names=self.param_names,
            coords=self.coords,
            settings=self.settings,
        )

    def subset(self, indices: Sequence[int] | np.ndarray) -> SnapshotSet:
        """The snapshot set restricted to the parameters at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        return SnapshotSet(
            params=self.params[idx],
            times=self.times,
            snapshots=self.snapshots[idx],
            param_names=self.param_names,
            coords=self.coords,
            settings=self.settings,
        )

    def index_of(self, params: np.ndarray, atol: float = 1e-9) -> np.ndarray:
        """Index of each row of ``params`` [m, n_p] in this set; -1 where absent."""
        params = np.atleast_2d(np.asarray(params, dtype=np.float64))
        close = np.all(np.abs(params[:, None, :] - self.params[None, :, :]) <= atol, axis=2)
        return np.where(close.any(axis=1), close.argmax(axis=1), -1)


def _settings_json(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True)


class SnapshotFileWriter:
    """Write a snapshot set to HDF5 one parameter at a time, resumably.

    The file is created under ``path + '.partial'`` with the full layout and a ``completed`` mask;
    :meth:`write` fills parameters (flushing each), :meth:`finish` renames the file to ``path`` once
    every parameter is complete. Reopening an existing ``.partial`` file with the same settings
    resumes it (``completed`` says what is done); different settings are an error unless
    ``overwrite`` is set.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        params: np.ndarray,
        times: np.ndarray,
        grid_shape: Sequence[int],
        param_names: Sequence[str],
        coords: Mapping[str, np.ndarray],
        settings: Mapping[str, Any],
        dtype: np.dtype | type = np.float64,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise DataError(f"output directory {self.path.parent} does not exist")
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        params = np.asarray(params, dtype=np.float64)
        settings_json = _settings_json(settings)
        if self.partial_path.exists() and not overwrite:
            try:
                handle = h5py.File(self.partial_path, "r+")
                same = (
                    handle.attrs.get("settings") == settings_json
                    and handle["params"].shape == params.shape
                    and np.array_equal(handle["params"][...], params)
                    and np.array_equal(handle["times"][...], np.asarray(times, dtype=np.float64))
                    and handle["snapshots"].shape == (params.shape[0], len(times), *grid_shape)
                    and handle["snapshots"].dtype == np.dtype(dtype)
                    and "completed" in handle
                )
            except (OSError, KeyError) as exc:
                # A run killed mid-write can leave an HDF5 file h5py cannot open. It is only a
                # cache of finished batches (and generate_cached holds the file lock, so no other
                # process writes it): start it again.
                warnings.warn(
                    f"{self.partial_path} is damaged ({str(exc).splitlines()[0]}); "
                    "generating it again",
                    stacklevel=2,
                )
                self.partial_path.unlink()
            else:
                if not same:
                    handle.close()
                    raise DataError(
                        f"{self.partial_path} is an interrupted run with other settings; "
                        "pass overwrite=True (CLI: --overwrite) to start again"
                    )
                self._file = handle
                return
        if self.partial_path.exists():
            self.partial_path.unlink()
        handle = h5py.File(self.partial_path, "w")
        n_mu, n_t = params.shape[0], len(times)
        handle.create_dataset(
            "snapshots",
            shape=(n_mu, n_t, *grid_shape),
            dtype=dtype,
            chunks=(1, n_t, *grid_shape),
        )
        handle.create_dataset("params", data=params)
        handle.create_dataset("times", data=np.asarray(times, dtype=np.float64))
        handle.create_dataset("completed", data=np.zeros(n_mu, dtype=bool))
        for name, values in coords.items():
            handle.create_dataset(f"coords/{name}", data=np.asarray(values))
        handle.attrs["coord_names"] = json.dumps(list(coords))
        handle.attrs["param_names"] = json.dumps(list(param_names))
        handle.attrs["settings"] = settings_json
        handle.attrs["format_version"] = FORMAT_VERSION
        handle.flush()
        self._file = handle

    @property
    def completed(self) -> np.ndarray:
        """[n_mu] bool: which parameters are already written."""
        return self._file["completed"][...]

    def write(self, indices: Sequence[int] | np.ndarray, snapshots: np.ndarray) -> None:
        """Store ``snapshots`` [len(indices), n_t, *grid] for the parameters at ``indices``."""
        snapshots = np.asarray(snapshots)
        if not np.all(np.isfinite(snapshots)):
            raise DataError("refusing to write snapshots containing NaN or Inf")
        for row, index in zip(snapshots, np.asarray(indices, dtype=np.int64), strict=True):
            self._file["snapshots"][int(index)] = row
            self._file["completed"][int(index)] = True
        self._file.flush()

    def finish(self) -> Path:
        """Close and move the file to its final name; every parameter must be complete."""
        missing = np.flatnonzero(~self.completed)
        if missing.size:
            raise DataError(
                f"{missing.size} parameters not written yet (first: {missing[:5].tolist()})"
            )
        self._file.close()
        os.replace(self.partial_path, self.path)
        return self.path

    def close(self) -> None:
        """Close without finishing (the ``.partial`` file stays for a later resume)."""
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> SnapshotFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def generate_cached(
    path: str | os.PathLike[str],
    layout: Mapping[str, Any],
    solve: Callable[[np.ndarray], Iterable[tuple[np.ndarray, np.ndarray]]],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a generated snapshot set to ``path``, cached by settings and resumable.

    ``layout`` holds the :class:`SnapshotFileWriter` arguments (``params``, ``times``,
    ``grid_shape``, ``param_names``, ``coords``, ``settings``). ``solve(todo)`` receives the
    indices of the parameters not written yet and yields ``(indices, snapshots)`` pairs, indices
    into ``todo`` and snapshots [len(indices), n_t, *grid].

    * An existing complete file with the same settings and parameters is reused (returns at once).
    * An existing file with other settings or parameters is an error unless ``overwrite=True``
      (then it is replaced atomically once the new set is complete).
    * Each yielded batch is written to ``path + '.partial'``; an interrupted run keeps those and a
      rerun with the same settings skips them. The final name appears only when every parameter is
      written.

    A batch is written in a background thread while ``solve`` computes the next one (h5py
    releases the GIL during I/O); at most one batch waits to be written.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"output directory {path.parent} does not exist")
    # Two processes (two studies, two workers) needing the same file: the first generates it,
    # the others wait here and then find it complete. The lock is an OS lock (flock) on
    # path + '.lock': a killed holder releases it, so a stale lock file never blocks.
    with FileLock(str(path) + ".lock"):
        return _generate_locked(path, layout, solve, overwrite=overwrite)


def _generate_locked(
    path: Path,
    layout: Mapping[str, Any],
    solve: Callable[[np.ndarray], Iterable[tuple[np.ndarray, np.ndarray]]],
    *,
    overwrite: bool,
) -> Path:
    params = np.asarray(layout["params"], dtype=np.float64)
    if path.exists() and not overwrite:
        if cache_matches(path, layout["settings"], params):
            return path
        raise DataError(
            f"{path} exists with other settings or parameters; pass overwrite=True "
            "(CLI: --overwrite) to regenerate it"
        )
    try:
        writer = SnapshotFileWriter(path, **layout)
    except DataError:
        if not overwrite:
            raise
        writer = SnapshotFileWriter(path, **layout, overwrite=True)
    with writer:
        todo = np.flatnonzero(~writer.completed)
        if todo.size:
            _write_behind(writer, todo, solve(todo))
        return writer.finish()


def _write_behind(
    writer: SnapshotFileWriter,
    todo: np.ndarray,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
) -> None:
    # An exception from the solver (an interrupt too) first lets the pending write finish, so the
    # .partial file keeps every batch that was computed; a write error surfaces at the next batch.
    pending: Future[None] | None = None
    with ThreadPoolExecutor(1) as pool:
        for idx, snaps in batches:
            if pending is not None:
                pending.result()
            pending = pool.submit(writer.write, todo[idx], snaps)
        if pending is not None:
            pending.result()


def save_snapshot_set(
    path: str | os.PathLike[str], data: SnapshotSet, *, train: np.ndarray | None = None
) -> Path:
    """Write ``data`` to HDF5 atomically (temp file + rename).

    ``train`` : optional bool [n_mu], stored as the ``train`` dataset (a file's default training
    split, see docs/data.md).
    """
    if train is not None:
        train = np.asarray(train)
        if train.dtype != bool or train.shape != (data.params.shape[0],):
            raise DataError(
                f"train must be a boolean array of shape ({data.params.shape[0]},), got "
                f"{train.dtype} {train.shape}"
            )
    writer = SnapshotFileWriter(
        path, **data.file_layout(), dtype=data.snapshots.dtype, overwrite=True
    )
    with writer:
        if train is not None:
            writer._file.create_dataset("train", data=train)
        writer.write(np.arange(data.params.shape[0]), data.snapshots)
        return writer.finish()


def cache_matches(
    path: str | os.PathLike[str],
    settings: Mapping[str, Any],
    params: np.ndarray,
    *,
    complete: bool = True,
) -> bool:
    """True if ``path`` is a snapshot file with these settings and parameters (and, with
    ``complete``, every parameter written): a generated cache that may be reused.

    Raises :class:`DataError` ("...; delete it") when ``path`` is not a readable snapshot file.
    """
    try:
        with h5py.File(path, "r") as handle:
            stored = json.loads(handle.attrs["settings"])
            return (
                stored == json.loads(json.dumps(settings))
                and handle["params"].shape == params.shape
                and np.array_equal(handle["params"][...], params)
                and (not complete or bool(handle["completed"][...].all()))
            )
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"{path} exists but is not a readable snapshot file ({exc}); delete it"
        ) from None


FIX = "make it with 'mlasdi data import' or mlasdi.data.save_snapshot_set (docs/data.md)"


@dataclass(frozen=True)
class SnapshotFileInfo:
    """What a snapshot file holds besides the snapshots (:func:`inspect_snapshot_file`).

    params : [n_mu, n_p]; times : [n_t]; grid_shape : the snapshots' grid axes; train : the
    optional boolean ``train`` dataset [n_mu] (None when absent).
    """

    path: Path
    params: np.ndarray
    times: np.ndarray
    grid_shape: tuple[int, ...]
    param_names: tuple[str, ...]
    train: np.ndarray | None
    settings: Mapping[str, Any]

    @property
    def n_state(self) -> int:
        return int(np.prod(self.grid_shape))


def _check_header(path: Path, handle: h5py.File) -> SnapshotFileInfo:
    missing = {"snapshots", "params", "times", "completed"} - set(handle)
    if missing:
        raise DataError(f"{path} is not a snapshot file: missing datasets {sorted(missing)}; {FIX}")
    version = int(handle.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path} has format version {version}, expected {FORMAT_VERSION}; rewrite it: {FIX}"
        )
    if not handle["completed"][...].all():
        raise DataError(f"{path} is incomplete (an interrupted generation); delete it and rerun")
    shape = handle["snapshots"].shape
    params = handle["params"][...]
    times = handle["times"][...]
    if len(shape) < 3:
        raise DataError(
            f"{path}: snapshots has shape {shape} (rank {len(shape)}); it must be "
            f"[n_mu, n_t, *grid] (rank >= 3, one parameter per row, one time per column)"
        )
    if params.ndim != 2:
        raise DataError(f"{path}: params has shape {params.shape}; it must be [n_mu, n_p] (rank 2)")
    if times.ndim != 1:
        raise DataError(f"{path}: times has shape {times.shape}; it must be [n_t] (rank 1)")
    if params.shape[0] != shape[0] or times.size != shape[1]:
        raise DataError(
            f"{path}: snapshots {shape} does not match params {params.shape} and times "
            f"{times.shape}; snapshots must be [n_mu, n_t, *grid]"
        )
    if times.size < 3:
        raise DataError(f"{path} has {times.size} snapshots per parameter; at least 3 are needed")
    if not np.all(np.isfinite(params)) or not np.all(np.isfinite(times)):
        raise DataError(f"{path}: params or times contain NaN or Inf")
    steps = np.diff(times)
    if np.any(steps <= 0):
        i = int(np.flatnonzero(steps <= 0)[0])
        raise DataError(
            f"{path}: times must be increasing, but times[{i + 1}] = {times[i + 1]:g} follows "
            f"times[{i}] = {times[i]:g}"
        )
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=0):
        i = int(np.argmax(np.abs(steps - steps[0])))
        raise DataError(
            f"{path}: times must be uniformly spaced (step {steps[0]:g}, but times[{i + 1}] - "
            f"times[{i}] = {steps[i]:g}); resample the snapshots to a uniform time grid"
        )
    unique, first, counts = np.unique(params, axis=0, return_index=True, return_counts=True)
    if unique.shape[0] != params.shape[0]:
        dup = unique[counts > 1][0]
        rows = np.flatnonzero(np.all(params == dup, axis=1)).tolist()
        raise DataError(
            f"{path}: duplicate parameters {dup.tolist()} in rows {rows}; each parameter must "
            "appear once"
        )
    names = tuple(json.loads(handle.attrs.get("param_names", "[]")))
    if len(names) != params.shape[1]:
        raise DataError(f"{path}: {len(names)} parameter names for {params.shape[1]} parameters")
    train = None
    if "train" in handle:
        train = handle["train"][...]
        if train.dtype != bool or train.shape != (params.shape[0],):
            raise DataError(
                f"{path}: the train dataset must be boolean of shape ({params.shape[0]},), got "
                f"{train.dtype} {train.shape}"
            )
    return SnapshotFileInfo(
        path=path,
        params=params.astype(np.float64),
        times=times.astype(np.float64),
        grid_shape=tuple(int(n) for n in shape[2:]),
        param_names=names,
        train=train,
        settings=json.loads(handle.attrs.get("settings", "{}")),
    )


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise DataError(f"snapshot file {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path} is not a readable HDF5 file ({exc}); {FIX}") from None


def inspect_snapshot_file(path: str | os.PathLike[str]) -> SnapshotFileInfo:
    """Read and check a snapshot file's layout, parameters and times (no snapshot data is read).

    Raises :class:`DataError` naming the file for a missing file, junk, a missing dataset, wrong
    ranks or shapes, non-finite parameters or times, times that are not increasing and uniform,
    fewer than 3 snapshots, duplicate parameters and a malformed ``train`` dataset.
    """
    path = Path(path)
    with _open(path) as handle:
        return _check_header(path, handle)


def _rows(handle: h5py.File, n_mu: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < -n_mu or idx.max() >= n_mu):
        raise DataError(f"indices out of range for {n_mu} parameters: {idx.tolist()}")
    return idx


def _read_rows(
    handle: h5py.File, idx: np.ndarray | None, time_slice: slice, dtype: np.dtype | None = None
) -> np.ndarray:
    """snapshots[idx, time_slice] (rows in any order, repeats allowed; None: every row), in
    ``dtype`` (default: the file's), converted by HDF5 as it reads: no copy in the file's dtype
    is held."""
    dataset = handle["snapshots"]
    source = dataset if dtype is None else dataset.astype(dtype)
    if idx is None:
        return source[:, time_slice]
    rows = idx % dataset.shape[0]
    if rows.size and np.all(np.diff(rows) == 1):  # a block of rows, e.g. a batch of a test set
        return source[rows[0] : rows[-1] + 1, time_slice]
    # h5py reads only strictly increasing indices: read each once, then reorder (a copy).
    unique, inverse = np.unique(rows, return_inverse=True)
    return source[unique, time_slice][inverse]


def load_snapshot_set(
    path: str | os.PathLike[str],
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    time_slice: slice = slice(None),
    dtype: np.dtype | type | None = None,
) -> SnapshotSet:
    """Read and validate a snapshot file (optionally only the parameters at ``indices``, and only
    the times ``times[time_slice]``: e.g. ``slice(None, None, k)`` every k-th), with the
    snapshots in ``dtype`` (default: the file's; converted while reading, so a float64 file read
    as float32 never holds its float64 copy, and a value beyond float32's range reads as Inf)."""
    path = Path(path)
    with _open(path) as handle:
        info = _check_header(path, handle)
        idx = None if indices is None else _rows(handle, info.params.shape[0], indices)
        snapshots = _read_rows(handle, idx, time_slice, None if dtype is None else np.dtype(dtype))
        params = info.params if idx is None else info.params[idx]
        coord_names = json.loads(handle.attrs.get("coord_names", "[]"))
        absent = [name for name in coord_names if f"coords/{name}" not in handle]
        if absent:
            raise DataError(f"{path}: coord_names lists {absent} but coords/ lacks them; {FIX}")
        coords = {name: handle[f"coords/{name}"][...] for name in coord_names}
    try:
        return SnapshotSet(
            params=params,
            times=info.times[time_slice],
            snapshots=snapshots,
            param_names=info.param_names,
            coords=coords,
            settings=info.settings,
        )
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


# Bytes of snapshots one batch of iter_snapshot_rows reads (at least one parameter).
SCAN_BATCH_BYTES = 64 * 2**20


def iter_snapshot_rows(
    path: str | os.PathLike[str],
    indices: Sequence[int] | np.ndarray,
) -> Iterator[np.ndarray]:
    """The snapshots [b, n_t, *grid] (the file's dtype, every time) of the parameters at
    ``indices``, in order, about :data:`SCAN_BATCH_BYTES` at a time: what
    ``load_snapshot_set(path, indices=indices).snapshots`` holds, without holding it all.

    The header is checked first and every batch for NaN or Inf, with the messages of
    :func:`load_snapshot_set` (a parameter is named by its position in ``indices``).
    """
    path = Path(path)
    with _open(path) as handle:
        info = _check_header(path, handle)
        idx = _rows(handle, info.params.shape[0], indices)
        dataset = handle["snapshots"]
        row_bytes = int(np.prod(dataset.shape[1:])) * dataset.dtype.itemsize
        step = max(1, SCAN_BATCH_BYTES // row_bytes)
        for start in range(0, idx.size, step):
            batch = _read_rows(handle, idx[start : start + step], slice(None))
            try:
                check_finite(batch, first=start)
            except DataError as exc:
                raise DataError(f"{path}: {exc}") from None
            yield batch


@dataclass(frozen=True)
class SnapshotReader:
    """Parameters of a snapshot file read on demand, a batch at a time.

    ``reader[start:stop]`` is float32 [stop - start, n_t, n_state] (flattened as
    :meth:`SnapshotSet.flat_snapshots`): the snapshots of rows ``rows[start:stop]`` of the file
    at ``times[::time_stride]``, validated as :func:`load_snapshot_set` validates. It holds only
    the path and indices, so it pickles to a few hundred bytes; the file must be at ``path``
    wherever it is read.
    """

    path: str
    rows: tuple[int, ...]
    time_stride: int
    n_times: int
    grid_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.rows), self.n_times, int(np.prod(self.grid_shape)))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError(f"SnapshotReader reads slices of parameters, got {key!r}")
        data = load_snapshot_set(
            self.path,
            indices=self.rows[key],
            time_slice=slice(None, None, self.time_stride),
            dtype=np.float32,
        )
        return data.flat_snapshots()

    def check(self) -> None:
        """Raise :class:`DataError` (one line naming the path) if the file is not at ``path``."""
        if not Path(self.path).is_file():
            raise DataError(
                f"snapshot file {self.path} does not exist on this node ({socket.gethostname()}); "
                "a study reading its test truth from the file needs it at the same path on every "
                "node"
            )


NPZ_KEYS = ("params", "times", "snapshots", "param_names", "coords", "coord_names", "train")


def import_npz(
    npz: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write the snapshot file ``out`` from the NumPy arrays in ``npz`` (``mlasdi data import``).

    Keys: ``params`` [n_mu, n_p] (or [n_mu] for one parameter), ``times`` [n_t], ``snapshots``
    [n_mu, n_t, *grid]; optional ``param_names`` [n_p] (default p0, p1, ...), ``coords`` ([n] for
    a one-axis grid, [n_axes, n] for several axes of one length), ``coord_names`` [n_axes]
    (default x, y, z, ...) and ``train`` (bool [n_mu]: the default training split). Every check
    of :func:`inspect_snapshot_file` is made before ``out`` is written.
    """
    npz, out = Path(npz), Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise DataError(f"output directory {out.parent} does not exist")
    try:
        arrays = np.load(npz, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{npz} does not exist") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{npz} is not a readable .npz file ({exc})") from None
    with arrays:
        keys = set(arrays.files)
        missing = [k for k in ("params", "times", "snapshots") if k not in keys]
        if missing:
            raise DataError(
                f"{npz} has no array(s) {missing}; it needs params [n_mu, n_p], times [n_t] and "
                f"snapshots [n_mu, n_t, *grid] (it has {sorted(keys)})"
            )
        unknown = sorted(keys - set(NPZ_KEYS))
        if unknown:
            raise DataError(f"{npz}: unknown array(s) {unknown}; valid keys: {list(NPZ_KEYS)}")
        try:
            loaded = {k: arrays[k] for k in arrays.files}
        except ValueError as exc:  # object arrays need pickle, which is refused
            raise DataError(f"{npz}: {exc}; store names as string arrays") from None
    params = loaded["params"]
    if params.ndim == 1:
        params = params[:, None]
    snapshots = loaded["snapshots"]
    n_p = params.shape[1] if params.ndim == 2 else 0
    names = tuple(str(n) for n in loaded.get("param_names", default_param_names(n_p)))
    coords: dict[str, np.ndarray] = {}
    if "coords" in loaded:
        c = loaded["coords"]
        n_axes = max(snapshots.ndim - 2, 0)
        axes = [c] if c.ndim == 1 else list(c)
        default = ["x", "y", "z"][:n_axes] if n_axes <= 3 else [f"x{i}" for i in range(n_axes)]
        coord_names = [str(n) for n in loaded.get("coord_names", default)]
        if len(axes) != n_axes or len(coord_names) != n_axes:
            raise DataError(
                f"{npz}: coords give {len(axes)} axes (names {coord_names}) for a grid of "
                f"{n_axes} axes {snapshots.shape[2:]}"
            )
        for name, axis, n in zip(coord_names, axes, snapshots.shape[2:], strict=True):
            if axis.shape != (n,):
                raise DataError(f"{npz}: coords {name} has shape {axis.shape}, the grid axis {n}")
            coords[name] = axis
    try:
        data = SnapshotSet(
            params=params,
            times=loaded["times"],
            snapshots=snapshots,
            param_names=names,
            coords=coords,
            settings={"problem": "file", "source": npz.name},
        )
    except DataError as exc:
        raise DataError(f"{npz}: {exc}") from None
    unique = np.unique(data.params, axis=0)
    if unique.shape[0] != data.params.shape[0]:
        raise DataError(f"{npz}: duplicate parameters in params; each parameter must appear once")
    train = loaded.get("train")
    try:
        return save_snapshot_set(out, data, train=train)
    except DataError as exc:
        raise DataError(f"{npz}: {exc}") from None
