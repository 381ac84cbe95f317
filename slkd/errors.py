"""The errors slkd raises for bad input: each message says what to change.

Every class is defined here, and this module imports nothing of slkd, torch or the host, so
the list can be read (``from slkd.errors import KNOWN_ERRORS``) without loading torchvision
or PIL. The modules that raise them import them from here (and keep the old names, e.g.
``slkd.host.config.ConfigError``, as the same class). Command-line entry points print these
as one line and exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "BenchError",
    "CheckoutNotFound",
    "CheckpointError",
    "ConfigError",
    "DatasetMissing",
    "FetchError",
    "HostNotFound",
    "KNOWN_ERRORS",
    "LossInputError",
    "ModelError",
    "NonFiniteLoss",
    "RegistrationConflict",
    "StepCaptureError",
    "UsageError",
]


class UsageError(RuntimeError):
    """A command line that cannot run; the message says what to change.

    Defined here, not in :mod:`slkd.run.train`: under ``python -m slkd.run.train`` that module
    runs as ``__main__``, and a class of its own would not be the one ``KNOWN_ERRORS`` holds.
    """


class ConfigError(ValueError):
    """A config that cannot run; the message says what to change."""


class DatasetMissing(FileNotFoundError):
    """The dataset files are not where the host reads them; the message says how to fetch them."""


class ModelError(ValueError):
    """A network that cannot be built or loaded; the message names the fix."""


class HostNotFound(ImportError):
    """mdistiller cannot be imported; the message says how to install it."""


class RegistrationConflict(RuntimeError):
    """The host already has a different object under a name slkd registers."""


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; the message names epoch, iteration and loss terms."""


class CheckpointError(RuntimeError):
    """No usable checkpoint; the message names the files tried."""


class StepCaptureError(RuntimeError):
    """A step could not be recorded as a CUDA graph; the message names the fix."""


class FetchError(RuntimeError):
    """A checkout, download, checkpoint or dataset is missing or broken.

    The message names the offending path and the command that fixes it.
    """


class BenchError(ValueError):
    """A benchmark that cannot run or report; the message says what to change."""


class CheckoutNotFound(RuntimeError):
    """No mdistiller checkout is named or importable, or the named folder is not one.

    ``origin`` names where the rejected folder came from; None when nothing was found at all.
    """

    def __init__(self, message: str, origin: str | None = None):
        super().__init__(message)
        self.origin = origin


class LossInputError(ValueError, TypeError):
    """Bad input to a loss function (:mod:`slkd.losses`); the message names the argument and
    what to pass. Both a ValueError and a TypeError, so code that caught either before the
    losses shared their checks still does. Not in ``KNOWN_ERRORS``: the commands validate the
    config first, so a command that reaches it has a bug worth its traceback."""


KNOWN_ERRORS = (
    ConfigError,
    DatasetMissing,
    ModelError,
    HostNotFound,
    RegistrationConflict,
    NonFiniteLoss,
    UsageError,
    CheckpointError,
    StepCaptureError,
    FetchError,
    BenchError,
    CheckoutNotFound,
)
"""What a command prints as one line (every class above but :class:`LossInputError`)."""
