"""The logit-standardization fork's distillers (sunshangquan/logit-standardization-KD), loaded
from ``$SLKD_LS_FORK_PATH`` (:mod:`tests.helpers.hosts`) as a private package beside whichever
mdistiller the tests run on, as a test oracle."""

import importlib.util
import sys
import types

from tests.helpers.hosts import LS_FORK, checkout

PACKAGE = "_ls_fork_distillers"


def ls_fork_distillers() -> types.SimpleNamespace:
    """The fork's ``KD``, ``DKD`` and ``MLKD`` modules; skips naming the variable without it."""
    root = checkout(LS_FORK, needs="mdistiller/distillers/KD.py") / "mdistiller" / "distillers"
    # its MLKD.py imports turtle, unused: the tests' host fixture (slkd.host.registry.import_host)
    # has put a placeholder in place where Tk is missing
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
