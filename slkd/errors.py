"""The errors slkd raises for bad input: each message says what to change.

Command-line entry points print these as one line and exit 1; anything else is a bug and
keeps its traceback.
"""

from slkd.host.config import ConfigError
from slkd.host.data import DatasetMissing
from slkd.host.models import ModelError
from slkd.host.registry import HostNotFound, RegistrationConflict
from slkd.host.trainer import NonFiniteLoss
from slkd.utils.checkpoint import CheckpointError


class UsageError(RuntimeError):
    """A command line that cannot run; the message says what to change.

    Defined here, not in :mod:`slkd.run.train`: under ``python -m slkd.run.train`` that module
    runs as ``__main__``, and a class of its own would not be the one ``KNOWN_ERRORS`` holds.
    """


KNOWN_ERRORS = (
    ConfigError,
    DatasetMissing,
    ModelError,
    HostNotFound,
    RegistrationConflict,
    NonFiniteLoss,
    UsageError,
    CheckpointError,
)
