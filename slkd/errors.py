"""The errors slkd raises for bad input: each message says what to change.

Command-line entry points print these as one line and exit 1; anything else is a bug and
keeps its traceback.
"""

from slkd.host.config import ConfigError
from slkd.host.data import DatasetMissing
from slkd.host.models import ModelError
from slkd.host.registry import HostNotFound, RegistrationConflict
from slkd.host.trainer import NonFiniteLoss
from slkd.run.train import UsageError
from slkd.utils.checkpoint import CheckpointError

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
