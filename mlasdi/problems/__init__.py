"""Full-order data sources behind one interface (:mod:`mlasdi.problems.source`) and the registry
that maps ``[data] problem`` names to them.

Adding a problem is one module that defines a :class:`~mlasdi.problems.source.DataSource`
subclass and one line in :data:`SOURCES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlasdi.config import ConfigError, choice_error, from_dict, unknown_keys_error
from mlasdi.problems.burgers1d import Burgers1DData
from mlasdi.problems.oscillator import OscillatorData
from mlasdi.problems.snapshot_file import FileData
from mlasdi.problems.source import DataSource
from mlasdi.problems.vlasov import VlasovData

SOURCES: dict[str, type[DataSource]] = {
    "vlasov": VlasovData,
    "oscillator": OscillatorData,
    "burgers1d": Burgers1DData,
    "file": FileData,
}


def source_keys(cls: type[DataSource]) -> list[str]:
    """The ``[data]`` keys a source takes (besides ``problem``)."""
    return list(cls.__dataclass_fields__)


def data_source(raw: Mapping[str, Any]) -> DataSource:
    """The checked data source of a ``[data]`` table (``problem`` omitted: ``"file"``).

    Raises :class:`~mlasdi.config.ConfigError` naming the key, or
    :class:`~mlasdi.data.DataError` naming the file.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[data] must be a table, got {type(raw).__name__}")
    d = dict(raw)
    problem = d.pop("problem", "file")
    if problem not in SOURCES:
        raise ConfigError(choice_error("data.problem", problem, list(SOURCES)))
    cls = SOURCES[problem]
    keys = source_keys(cls)
    for key in d:
        if key not in keys and any(key in source_keys(other) for other in SOURCES.values()):
            raise ConfigError(f"data.{key} does not apply to problem {problem!r}")
    unknown = [key for key in d if key not in keys]
    if unknown:
        raise ConfigError(unknown_keys_error(unknown, ["problem", *keys], "[data]"))
    source = from_dict(cls, d, where="data")
    source.check()
    return source


__all__ = ["SOURCES", "DataSource", "data_source", "source_keys"]
