"""Shared fixtures. Tests that need mdistiller take the ``host`` fixture and skip without it.

Point the tests at a checkout with ``SLKD_MDISTILLER_PATH=/path/to/mdistiller`` (upstream
megvii-research/mdistiller a08d46f, or the MLKD fork), or install one with ``pip install -e``.
"""

import os

import pytest
import torch

# Without a GPU the fused Triton loss runs in Triton's CPU interpreter, which must be chosen
# before slkd.losses.sld_fused is imported (tests/test_losses_sld_fused.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

NO_HOST_REASON = (
    "mdistiller is not importable: set SLKD_MDISTILLER_PATH to an mdistiller checkout "
    "(upstream a08d46f or the MLKD fork) or pip install -e one"
)


@pytest.fixture(scope="session")
def host():
    """The registered mdistiller host (``slkd.host.registry.Host``), or skip."""
    from slkd.host.registry import HostNotFound, import_host

    try:
        found = import_host()
    except HostNotFound as error:
        pytest.skip(f"{NO_HOST_REASON} ({str(error).splitlines()[0]})")
    import slkd

    slkd.register()
    return found


@pytest.fixture
def fresh_cfg(host):
    """A clone of the host's CFG with slkd's nodes, safe to mutate."""
    return host.cfg.clone()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with ``tmp_path`` as the working directory (run folders land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_report_header(config):
    return f"SLKD_MDISTILLER_PATH={os.environ.get('SLKD_MDISTILLER_PATH', '(unset)')}"
