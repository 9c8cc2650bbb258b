"""The training program's parts, one concern per module (``python -m mesrgan.train`` is the
entry point):

* :mod:`.config` - flags, TOML files, the paper's defaults, validation;
* :mod:`.run_folder` - checkpoints, atomic saves, RNG state, resume checks, the folder's lock;
* :mod:`.loop` - the :class:`Trainer`: stages, iterations, saving, validation;
* :mod:`.steps`, :mod:`.optim` - one iteration of each stage; optimisers and lr schedules;
* :mod:`.components` - device, networks, data, the VGG perceptual loss;
* :mod:`.distributed` - torchrun processes and their collective steps;
* :mod:`.reporting` - console progress, ``metrics.jsonl``, TensorBoard;
* :mod:`.stops` - SIGINT / SIGTERM: stop after the iteration, or at once.
"""
from .config import (EXIT_NEEDS_VGG, MODELS, PAPER_DEFAULTS, QUICK, RUN_ONLY, STAGES, ConfigError, build_parser,
                     default_workers, dump_toml, resolve_config)
from .loop import Trainer
from .optim import lr_at
from .run_folder import RunFolder, RunLock, remove_temp_files, save_checkpoint
from .stops import StopNow

__all__ = ["EXIT_NEEDS_VGG", "MODELS", "PAPER_DEFAULTS", "QUICK", "RUN_ONLY", "STAGES", "ConfigError", "RunFolder", "RunLock",
           "StopNow", "Trainer", "build_parser", "default_workers", "dump_toml", "lr_at", "remove_temp_files",
           "resolve_config", "save_checkpoint"]
