"""Where the tests find the host codebases: environment variables only, never a default folder.

=========================  ==========================================================
``SLKD_MDISTILLER_PATH``   the mdistiller checkout under test (upstream a08d46f, or the
                           MLKD fork for the fork pass); else ``./mdistiller`` or an
                           installed mdistiller (:mod:`slkd.host.checkout`)
``SLKD_RELEASED_SLD_PATH`` the released SLD code (StephenEkaputra/Swapped-Logit-Distillation)
``SLKD_LS_FORK_PATH``      the logit-standardization fork (sunshangquan/logit-standardization-KD)
``SLKD_REQUIRE_HOSTS=1``   a test that would skip for want of one of these fails instead (CI)
=========================  ==========================================================

Hosts may be read-only (CI lays them out so): a test that patches, installs or writes into a
host works on :func:`writable_copy`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

MDISTILLER = "SLKD_MDISTILLER_PATH"
RELEASED_SLD = "SLKD_RELEASED_SLD_PATH"
LS_FORK = "SLKD_LS_FORK_PATH"
REQUIRE = "SLKD_REQUIRE_HOSTS"
HOST_VARIABLES = (MDISTILLER, RELEASED_SLD, LS_FORK)

CLONES = {
    MDISTILLER: "https://github.com/megvii-research/mdistiller (a08d46f) or "
    "https://github.com/Jin-Ying/Multi-Level-Logit-Distillation",
    RELEASED_SLD: "https://github.com/StephenEkaputra/Swapped-Logit-Distillation",
    LS_FORK: "https://github.com/sunshangquan/logit-standardization-KD",
}


def hosts_required() -> bool:
    """True under ``SLKD_REQUIRE_HOSTS=1``: a missing host fails the test instead of skipping it."""
    return os.environ.get(REQUIRE, "") not in ("", "0")


def missing(variable: str, why: str) -> str:
    """A skip reason that names the variable to set (the conftest fails such skips under
    ``SLKD_REQUIRE_HOSTS=1``)."""
    return f"{why}: clone {CLONES[variable]} and set {variable} to the clone"


def checkout(variable: str, *, needs: str) -> Path:
    """The folder ``$variable`` names, after checking it holds ``needs`` (a relative path);
    skips (fails under ``SLKD_REQUIRE_HOSTS=1``) naming the variable otherwise."""
    value = os.environ.get(variable)
    if not value:
        pytest.skip(missing(variable, f"{variable} is not set"))
    folder = Path(value)
    if not (folder / needs).exists():
        pytest.skip(missing(variable, f"{variable}={value} has no {needs}"))
    return folder


def writable_copy(source: Path, target: Path) -> Path:
    """A copy of the checkout ``source`` at ``target`` (without its git history, data, teacher
    checkpoints, outputs or caches), for tests that write into a host."""
    shutil.copytree(
        source,
        target,
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", "data", "download_ckpts", "output", "__pycache__", "*.egg-info"),
    )
    for folder in [target, *(p for p in target.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(folder.stat().st_mode | 0o200)  # a read-only host gives read-only copies
    return target


def path_imports_only(monkeypatch) -> None:
    """Leave only importlib's own finders on ``sys.meta_path`` for the test: an editable install
    (e.g. the mdistiller ``scripts/quickstart.sh`` installs) adds a finder that would supply
    ``mdistiller`` submodules missing from the package found on ``sys.path``."""
    own = ("_frozen_importlib", "importlib")
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if getattr(f, "__module__", "").startswith(own)])
    monkeypatch.setattr(sys, "path_importer_cache", {})
