"""slkd.errors defines every error a command prints as one line, and loads nothing heavy."""

import importlib
import subprocess
import sys

import slkd.errors as errors

RAISED_FROM = {
    "ConfigError": "slkd.host.config",
    "DatasetMissing": "slkd.host.data",
    "ModelError": "slkd.host.models",
    "HostNotFound": "slkd.host.registry",
    "RegistrationConflict": "slkd.host.registry",
    "NonFiniteLoss": "slkd.host.trainer",
    "CheckpointError": "slkd.utils.checkpoint",
    "StepCaptureError": "slkd.host.graphs",
    "FetchError": "slkd.run.fetch",
    "BenchError": "slkd.bench.sources",
    "CheckoutNotFound": "slkd.host.checkout",
}


def test_importing_the_errors_loads_neither_torchvision_nor_pil():
    code = "import sys, slkd.errors; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'PIL')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_error_is_defined_in_the_errors_module_and_known():
    for name, module in RAISED_FROM.items():
        cls = getattr(errors, name)
        assert cls.__module__ == "slkd.errors"
        assert getattr(importlib.import_module(module), name) is cls  # the raising module's name
        assert cls in errors.KNOWN_ERRORS
    assert errors.UsageError in errors.KNOWN_ERRORS
    assert set(errors.__all__) == set(RAISED_FROM) | {"UsageError", "KNOWN_ERRORS", "LossInputError"}
