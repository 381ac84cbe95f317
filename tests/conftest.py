"""Shared fixtures. Tests that need mdistiller take the ``host`` fixture and skip without it.

The hosts come from environment variables only (tests/helpers/hosts.py): point the tests at a
checkout with ``SLKD_MDISTILLER_PATH=/path/to/mdistiller`` (upstream megvii-research/mdistiller
a08d46f, or the MLKD fork), else ``./mdistiller`` or an installed one is used; the released SLD
code with ``SLKD_RELEASED_SLD_PATH``, the logit-standardization fork with ``SLKD_LS_FORK_PATH``.
Under ``SLKD_REQUIRE_HOSTS=1`` (CI) a test that would skip for want of one of them fails.

Markers: ``host`` (set here on every test that takes a host fixture) selects the tests to run
again with the MLKD fork as host (``-m host``); ``mlkd_fork`` tests need the fork as host and
skip, saying so, under upstream mdistiller.
"""

import os

import pytest
import torch

from tests.helpers.hosts import HOST_VARIABLES, LS_FORK, MDISTILLER, RELEASED_SLD, checkout, hosts_required, missing

# Without a GPU the fused Triton loss runs in Triton's CPU interpreter, which must be chosen
# before slkd.losses.sld_fused is imported (tests/test_losses_sld_fused.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HOST_FIXTURES = {"host", "mlkd_fork_host", "released_sld", "ls_fork", "cifar_model_dict"}
"""Fixtures that need a host codebase: a test using one is marked ``host``."""


@pytest.fixture(scope="session")
def host():
    """The registered mdistiller host (``slkd.host.registry.Host``), or skip."""
    from slkd.host.registry import HostNotFound, import_host

    try:
        found = import_host()
    except HostNotFound as error:
        pytest.skip(missing(MDISTILLER, f"mdistiller is not importable ({str(error).splitlines()[0]})"))
    import slkd

    slkd.register()
    return found


@pytest.fixture(scope="session")
def mlkd_fork_host(host):
    """The host when it is the MLKD fork; skip (for the fork pass, ``-m host``) otherwise."""
    if host.flavour != "mlkd-fork":
        root = os.path.dirname(os.path.dirname(host.package.__file__))
        pytest.skip(
            f"needs the MLKD fork as host, not {root}: run again (-m host) with "
            f"{MDISTILLER}=/path/to/Multi-Level-Logit-Distillation"
        )
    return host


@pytest.fixture(scope="session")
def released_sld():
    """The checkout of the released SLD code (``$SLKD_RELEASED_SLD_PATH``), or skip."""
    return checkout(RELEASED_SLD, needs="mdistiller/distillers/SLD.py")


@pytest.fixture(scope="session")
def ls_fork():
    """The checkout of the logit-standardization fork (``$SLKD_LS_FORK_PATH``), or skip."""
    return checkout(LS_FORK, needs="mdistiller")


@pytest.fixture
def fresh_cfg(host):
    """A clone of the host's CFG with slkd's nodes, safe to mutate."""
    return host.cfg.clone()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with ``tmp_path`` as the working directory (run folders land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_collection_modifyitems(config, items):
    """Mark what needs a host (before ``-m`` selects): ``host`` for every test taking a host
    fixture, ``mlkd_fork`` for every test taking ``mlkd_fork_host``."""
    for item in items:
        if "mlkd_fork_host" in item.fixturenames and not item.get_closest_marker("mlkd_fork"):
            item.add_marker(pytest.mark.mlkd_fork)
        if HOST_FIXTURES & set(item.fixturenames) or item.get_closest_marker("mlkd_fork"):
            item.add_marker(pytest.mark.host)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``SLKD_REQUIRE_HOSTS=1``, a skip whose reason names a host variable is a failure."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and hosts_required() and isinstance(report.longrepr, tuple)):
        return
    reason = report.longrepr[2]
    if any(name in reason for name in HOST_VARIABLES):
        report.outcome = "failed"
        report.longrepr = f"SLKD_REQUIRE_HOSTS=1 and a host is missing: {reason}"


def pytest_report_header(config):
    return [f"{name}={os.environ.get(name, '(unset)')}" for name in HOST_VARIABLES] + [
        f"SLKD_REQUIRE_HOSTS={os.environ.get('SLKD_REQUIRE_HOSTS', '(unset)')}"
    ]
