"""mlasdi: multi-stage latent space dynamics identification (mLaSDI) and GPLaSDI.

The public surface; everything else is reachable through its module (``mlasdi.dynamics``, ...).
"""

from mlasdi.runtime import passive_openmp_wait

# Before the first torch import: OpenMP reads its wait policy once, when torch loads it.
passive_openmp_wait()

from mlasdi.config import (
    AutoencoderConfig,
    ConfigError,
    GPConfig,
    ResidualStageConfig,
    ROMConfig,
    Stage1Config,
    from_dict,
    to_dict,
)
from mlasdi.data import SnapshotSet, load_snapshot_set, save_snapshot_set
from mlasdi.fit import FitResult, fit_rom
from mlasdi.metrics import max_relative_error, relative_error_over_time
from mlasdi.rom import MultiStageROM, evaluate, resolve_device
from mlasdi.train import DivergenceError, ResidualTrainer, Stage1Trainer

__version__ = "0.1.0"

__all__ = [
    "AutoencoderConfig",
    "ConfigError",
    "DivergenceError",
    "FitResult",
    "GPConfig",
    "MultiStageROM",
    "ROMConfig",
    "ResidualStageConfig",
    "ResidualTrainer",
    "SnapshotSet",
    "Stage1Config",
    "Stage1Trainer",
    "evaluate",
    "fit_rom",
    "from_dict",
    "load_snapshot_set",
    "max_relative_error",
    "relative_error_over_time",
    "resolve_device",
    "save_snapshot_set",
    "to_dict",
]
