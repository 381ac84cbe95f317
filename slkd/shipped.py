"""slkd's shipped configs (``mdistiller_configs/``), found in a source checkout or an install.

The top-level ``mdistiller_configs/`` of the repository is the source of truth; building the
distribution copies it into the package as ``slkd/mdistiller_configs`` (setup.py), so an
installed wheel carries them. ``--cfg NAME`` is a file relative to the working directory
first, then a name relative to the shipped configs (``cifar100/sld/res32x4_res8x4.yaml``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from slkd.errors import ConfigError

__all__ = ["FOLDER_NAME", "configs_folder", "resolve_config", "shipped_configs"]

FOLDER_NAME = "mdistiller_configs"
_PACKAGE = Path(__file__).resolve().parent
_CLOSEST = 5


def configs_folder() -> Path:
    """The shipped configs: the checkout's top-level folder when slkd runs from its source
    checkout (editable install), else the copy inside the installed package."""
    for folder in (_PACKAGE.parent / FOLDER_NAME, _PACKAGE / FOLDER_NAME):
        if (folder / "cifar100" / "sld").is_dir():
            return folder
    raise ConfigError(
        f"slkd's configs are neither in {_PACKAGE.parent / FOLDER_NAME} nor in {_PACKAGE / FOLDER_NAME}: "
        "reinstall slkd (pip install slkd, or pip install -e . in a checkout)"
    )


def shipped_configs() -> list[str]:
    """Every shipped config, as its name relative to :func:`configs_folder` (POSIX slashes)."""
    root = configs_folder()
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*.yaml"))


def resolve_config(name: str | os.PathLike) -> Path:
    """The config file ``--cfg name`` means: ``name`` itself when it is a file (relative to the
    working directory, or absolute), else ``name`` relative to the shipped configs (a leading
    ``mdistiller_configs/`` is allowed, as the README writes it). Otherwise
    :class:`~slkd.errors.ConfigError`, one line listing the closest shipped configs."""
    path = Path(name)
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == (FOLDER_NAME,) else path.parts
    shipped = configs_folder().joinpath(*parts)
    if parts and shipped.is_file():
        return shipped
    names = shipped_configs()
    wanted = Path(*parts).as_posix() if parts else str(name)
    closest = difflib.get_close_matches(wanted, names, n=_CLOSEST, cutoff=0.0)
    raise ConfigError(
        f"config file {name} is neither a file here ({Path.cwd()}) nor one of slkd's shipped configs; "
        f"closest shipped: {', '.join(closest)}"
    )
