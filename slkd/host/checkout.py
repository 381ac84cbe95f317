"""The one rule that finds the mdistiller checkout, for every slkd command.

``slkd-train`` (through :func:`slkd.host.registry.import_host`), ``slkd-fetch`` and
``slkd-bench`` all call :func:`find_checkout`, so in one environment they use one checkout.
Looked up in order:

1. an explicit folder (``--mdistiller-root``);
2. ``$SLKD_MDISTILLER_PATH`` (:data:`ENV_VAR`); ``$SLKD_MDISTILLER_ROOT``, an older name, is
   read when it is unset, with a :class:`FutureWarning` (:data:`LEGACY_ENV_VARS`);
3. ``./mdistiller`` when it holds an ``mdistiller`` package folder (where
   ``scripts/quickstart.sh`` clones it);
4. the folder above the importable ``mdistiller`` package, found without importing it.

The root is returned with symlinks resolved, the package folder resolved before its parent is
taken: mdistiller climbs out of its package with ``..``, which the operating system applies
after following symlinks. A root from 1-3 must contain an ``mdistiller`` folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from slkd.errors import CheckoutNotFound

__all__ = ["ENV_VAR", "LEGACY_ENV_VARS", "CLONE_HINT", "Checkout", "CheckoutNotFound", "find_checkout"]

_LOG = logging.getLogger(__name__)

ENV_VAR = "SLKD_MDISTILLER_PATH"
"""The environment variable naming the mdistiller checkout."""

LEGACY_ENV_VARS = ("SLKD_MDISTILLER_ROOT",)
"""Older names of :data:`ENV_VAR`, read (with a deprecation warning) only when it is unset."""

CLONE_HINT = (
    "git clone https://github.com/megvii-research/mdistiller && git -C mdistiller checkout a08d46f "
    "&& pip install -e ./mdistiller"
)
"""How to get mdistiller, which is not on PyPI."""


INSTALLED = "the installed mdistiller"
"""The origin of a checkout found as the folder above the importable ``mdistiller`` package."""


@dataclass(frozen=True)
class Checkout:
    """An mdistiller checkout: ``root`` holds the ``mdistiller`` package folder."""

    root: Path
    origin: str
    """Where it was found: ``"--mdistiller-root"``, ``"$SLKD_MDISTILLER_PATH"``, ``"./mdistiller"``
    or ``"the installed mdistiller"``."""

    @property
    def on_sys_path(self) -> bool:
        """False for an installed mdistiller (already importable); True when ``root`` must be put
        on ``sys.path`` for ``import mdistiller`` to find this checkout."""
        return self.origin != INSTALLED


def find_checkout(explicit: str | os.PathLike | None = None, *, explicit_origin: str = "--mdistiller-root") -> Checkout:
    """The mdistiller checkout by the rule of this module, or :class:`CheckoutNotFound`.

    ``explicit`` (named ``explicit_origin`` in messages) wins when given. The message of a
    named folder that is not a checkout starts with ``"<folder> (from <origin>) is not an
    mdistiller checkout"``; callers may add how their command is rerun.
    """
    if explicit:
        return _checked(Path(explicit), explicit_origin)
    named = _from_environment()
    if named is not None:
        return _checked(Path(named[1]), f"${named[0]}")
    local = Path("mdistiller")
    if (local / "mdistiller").is_dir():
        return _checked(local, "./mdistiller")
    spec = importlib.util.find_spec("mdistiller")
    if spec is None or not spec.submodule_search_locations:
        raise CheckoutNotFound(
            f"mdistiller is not importable and no checkout is named: set {ENV_VAR}=/path/to/mdistiller "
            f"(or pass --mdistiller-root), clone it into ./mdistiller, or install it.\n"
            f"  mdistiller is not on PyPI; clone and install it with: {CLONE_HINT}"
        )
    package = Path(next(iter(spec.submodule_search_locations))).resolve()
    return Checkout(package.parent, INSTALLED)


def _from_environment() -> tuple[str, str] | None:
    """(name, value) of :data:`ENV_VAR`, else of the first set legacy variable, else None."""
    legacy = [(name, os.environ[name]) for name in LEGACY_ENV_VARS if os.environ.get(name)]
    value = os.environ.get(ENV_VAR)
    if value:
        for name, other in legacy:
            if Path(other).resolve() != Path(value).resolve():
                _LOG.warning("Ignoring $%s=%s: $%s=%s wins.", name, other, ENV_VAR, value)
        return ENV_VAR, value
    if legacy:
        name, other = legacy[0]
        warnings.warn(f"${name} is deprecated: set ${ENV_VAR}={other} instead", FutureWarning, stacklevel=3)
        return legacy[0]
    return None


def _checked(root: Path, origin: str) -> Checkout:
    """``root`` resolved, after checking that it holds an ``mdistiller`` package folder."""
    root = root.resolve()
    if not (root / "mdistiller").is_dir():
        raise CheckoutNotFound(
            f"{root} (from {origin}) is not an mdistiller checkout (it has no mdistiller/ folder): "
            "name the folder that contains mdistiller/.\n"
            f"  mdistiller is not on PyPI; clone and install it with: {CLONE_HINT}",
            origin,
        )
    return Checkout(root, origin)
