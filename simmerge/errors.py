"""Typed exceptions for every way user input can be wrong.

Every error simmerge raises on bad input derives from :class:`SimmergeError`, so callers (and the
CLI) can catch one type. Each message names the offending input (a file, a model, a key) and says
how to fix it: a user reading only the message should know what to do next.
"""

from __future__ import annotations


class SimmergeError(Exception):
    """Base class of all simmerge errors caused by input, configuration or environment."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what} Fix: {fix}" if fix else what)


# --- files, folders, checkpoints -------------------------------------------------------------


class InputNotFoundError(SimmergeError, FileNotFoundError):
    """A file or folder named in the input does not exist."""


class CheckpointError(SimmergeError):
    """A checkpoint folder exists but cannot be used."""


class CorruptCheckpointError(CheckpointError):
    """A safetensors file has a bad header, wrong length or unsupported content."""


class AdapterError(CheckpointError):
    """A LoRA adapter folder cannot be read (not LoRA, DoRA, incomplete)."""


class AdapterBaseMismatchError(AdapterError):
    """A LoRA adapter's tensors do not fit the base it is applied to."""


class MissingShardError(CheckpointError):
    """A sharded index names a shard file that is not there."""


class PickleRefusedError(CheckpointError):
    """Only pickle weights (pytorch_model.bin) were found; loading them can run arbitrary code."""


class RemoteCodeRefusedError(CheckpointError):
    """The model needs ``trust_remote_code``, which simmerge never enables by default."""


class NonFiniteWeightsError(CheckpointError):
    """A tensor holds NaN or Inf values."""


# --- compatibility between models ------------------------------------------------------------


class IncompatibleModelsError(SimmergeError):
    """Two checkpoints that must be merged or compared do not fit together."""


class ArchitectureMismatchError(IncompatibleModelsError):
    """Different model_type / architectures / key dimensions in config.json."""


class TensorMismatchError(IncompatibleModelsError):
    """Tensor names, shapes or dtypes differ from the base model's."""


class VocabMismatchError(IncompatibleModelsError):
    """Tokenizers or vocabulary sizes differ, so merged embeddings would be garbled."""


# --- configuration files (catalog, plan, state) ----------------------------------------------


class ConfigError(SimmergeError):
    """A configuration file or object is malformed: unknown keys, wrong types, bad values."""


class CatalogError(ConfigError):
    """A catalog file is malformed or names unusable models."""


class DuplicateNameError(CatalogError):
    """Two entries share a name that must be unique."""


class PlanError(ConfigError):
    """A merge plan is malformed or cannot be executed."""


class UnknownOperatorError(PlanError):
    """The plan names a merge operator that is not registered."""


class OperatorParameterError(PlanError):
    """An operator parameter is unknown, of the wrong type or out of range."""


class NotPredictableError(PlanError):
    """A merge config is valid but outside what the predictor scores (the message says why)."""


# --- outputs ---------------------------------------------------------------------------------


class OutputPathError(SimmergeError):
    """An output location is unwritable, already exists, or escapes its folder."""


# --- caches ----------------------------------------------------------------------------------


class CacheError(SimmergeError):
    """A cache entry that is corrupt or was written by another version or configuration."""


# --- stage data ------------------------------------------------------------------------------


class ProbeSetError(ConfigError):
    """A probe file that is empty, malformed or lacks the text column."""


class OutcomeStoreError(SimmergeError):
    """The outcome store file is not a simmerge store, or was written by another version."""


class PredictorError(SimmergeError):
    """A saved predictor cannot be used (missing files, or features that do not match)."""


class BanditStateError(ConfigError):
    """A bandit state file, choice or reward that cannot be used."""


class GGUFArchitectureError(CheckpointError):
    """A GGUF file of an architecture transformers cannot load from GGUF."""
