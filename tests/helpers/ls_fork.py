"""The logit-standardization fork's distillers (sunshangquan/logit-standardization-KD), loaded
from ``$SLKD_LS_FORK_PATH`` as a private package beside whichever mdistiller the tests run on,
as a test oracle; tests skip, saying how to get it, when it is absent."""

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

ENV = "SLKD_LS_FORK_PATH"
PACKAGE = "_ls_fork_distillers"


def ls_fork_distillers() -> types.SimpleNamespace:
    """The fork's ``KD``, ``DKD`` and ``MLKD`` modules, or skip with the reason."""
    root = Path(os.environ.get(ENV, "/work/shared/hosts/ls-fork")) / "mdistiller" / "distillers"
    if not (root / "KD.py").is_file():
        pytest.skip(
            f"the logit-standardization fork is not at {root.parent.parent}: set {ENV} to a checkout "
            "of https://github.com/sunshangquan/logit-standardization-KD"
        )
    from slkd.host.registry import _allow_import_without_tk

    _allow_import_without_tk()  # its MLKD.py imports turtle, unused
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(root)]
        sys.modules[PACKAGE] = package
    modules = {}
    for name in ("KD", "DKD", "MLKD"):
        full = f"{PACKAGE}.{name}"
        if full not in sys.modules:
            spec = importlib.util.spec_from_file_location(full, root / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[full] = module
            spec.loader.exec_module(module)
        modules[name] = sys.modules[full]
    return types.SimpleNamespace(**modules)
