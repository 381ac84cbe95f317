"""slkd.host.checkout: one rule finds the mdistiller checkout, and slkd-fetch, slkd-bench and
the registry (slkd-train) all follow it. Fake checkouts in tmp_path; no host needed."""

import importlib.util
import logging
import sys
from pathlib import Path

import pytest

from slkd.bench import sources
from slkd.bench.sources import BenchError
from slkd.host import checkout as checkout_module
from slkd.host import registry
from slkd.host.checkout import CheckoutNotFound, find_checkout
from slkd.run import fetch
from slkd.run.fetch import FetchError
from tests.helpers.hosts import path_imports_only


def fake_checkout(folder: Path) -> Path:
    """A folder that each command takes for an mdistiller checkout (an importable package and
    the host configs slkd-bench reads)."""
    (folder / "mdistiller").mkdir(parents=True)
    (folder / "mdistiller" / "__init__.py").write_text("")
    (folder / "configs" / "cifar100").mkdir(parents=True)
    (folder / "configs" / "cifar100" / "kd.yaml").write_text("")
    return folder


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """No variable names a checkout, cwd is an empty folder, mdistiller is not imported and no
    finder outside importlib's own (an editable install's) can supply it."""
    for name in (checkout_module.ENV_VAR, *checkout_module.LEGACY_ENV_VARS):
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in sys.modules if n.split(".")[0] == "mdistiller"]:
        monkeypatch.delitem(sys.modules, name)
    path_imports_only(monkeypatch)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p or ".") / "mdistiller").is_dir()])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path.resolve()


def roots_of_the_three_commands(monkeypatch) -> dict[str, Path]:
    """The checkout slkd-fetch, slkd-bench and slkd-train (the registry's import) would use."""
    found = {"fetch": fetch.find_mdistiller_root(), "bench": sources.host_root()}
    monkeypatch.setattr(sys, "path", list(sys.path))
    registry._put_checkout_on_sys_path()
    spec = importlib.util.find_spec("mdistiller")
    found["train"] = Path(spec.origin).resolve().parents[1]
    return found


def test_the_variable_wins_over_local_and_installed(clean, monkeypatch):
    named = fake_checkout(clean / "named")
    fake_checkout(clean / "cwd" / "mdistiller")
    monkeypatch.syspath_prepend(str(fake_checkout(clean / "installed")))
    monkeypatch.setenv("SLKD_MDISTILLER_PATH", str(named))
    assert find_checkout() == checkout_module.Checkout(named, "$SLKD_MDISTILLER_PATH")
    assert set(roots_of_the_three_commands(monkeypatch).values()) == {named}


def test_local_mdistiller_wins_over_installed(clean, monkeypatch):
    local = fake_checkout(clean / "cwd" / "mdistiller")
    monkeypatch.syspath_prepend(str(fake_checkout(clean / "installed")))
    assert find_checkout() == checkout_module.Checkout(local, "./mdistiller")
    assert set(roots_of_the_three_commands(monkeypatch).values()) == {local}


def test_installed_package_is_resolved_before_its_parent_is_taken(clean, monkeypatch):
    real = fake_checkout(clean / "real")
    (clean / "link").mkdir()
    (clean / "link" / "mdistiller").symlink_to(real / "mdistiller")
    (clean / "link" / "configs").symlink_to(real / "configs")
    monkeypatch.syspath_prepend(str(clean / "link"))
    found = find_checkout()
    assert found.root == real and not found.on_sys_path
    # mdistiller's "../download_ckpts" is taken after the symlink is followed: real/, not link/
    assert set(roots_of_the_three_commands(monkeypatch).values()) == {real}


def test_explicit_folder_wins_over_the_variable(clean, monkeypatch):
    monkeypatch.setenv("SLKD_MDISTILLER_PATH", str(fake_checkout(clean / "named")))
    explicit = fake_checkout(clean / "explicit")
    assert find_checkout(explicit) == checkout_module.Checkout(explicit, "--mdistiller-root")
    assert fetch.find_mdistiller_root(explicit) == sources.host_root(explicit) == explicit


def test_legacy_variable_is_read_with_a_deprecation_warning(clean, monkeypatch):
    legacy = fake_checkout(clean / "legacy")
    monkeypatch.setenv("SLKD_MDISTILLER_ROOT", str(legacy))
    with pytest.warns(FutureWarning, match=r"^\$SLKD_MDISTILLER_ROOT is deprecated: set \$SLKD_MDISTILLER_PATH="):
        assert find_checkout() == checkout_module.Checkout(legacy, "$SLKD_MDISTILLER_ROOT")
    with pytest.warns(FutureWarning):
        assert set(roots_of_the_three_commands(monkeypatch).values()) == {legacy}


def test_legacy_variable_is_ignored_when_the_new_one_is_set(clean, monkeypatch, caplog):
    named = fake_checkout(clean / "named")
    monkeypatch.setenv("SLKD_MDISTILLER_PATH", str(named))
    monkeypatch.setenv("SLKD_MDISTILLER_ROOT", str(fake_checkout(clean / "legacy")))
    with caplog.at_level(logging.WARNING):
        assert find_checkout().root == named
    assert f"Ignoring $SLKD_MDISTILLER_ROOT={clean / 'legacy'}: $SLKD_MDISTILLER_PATH={named} wins." in caplog.text


def test_a_local_folder_without_the_package_is_not_taken(clean, monkeypatch):
    (clean / "cwd" / "mdistiller").mkdir()  # e.g. the cwd is a checkout: ./mdistiller is its package
    installed = fake_checkout(clean / "installed")
    monkeypatch.syspath_prepend(str(installed))
    assert find_checkout() == checkout_module.Checkout(installed, checkout_module.INSTALLED)


def test_a_named_folder_that_is_no_checkout_is_refused_by_all_three(clean, monkeypatch):
    monkeypatch.setenv("SLKD_MDISTILLER_PATH", str(clean))
    first = f"{clean} (from $SLKD_MDISTILLER_PATH) is not an mdistiller checkout (it has no mdistiller/ folder)"
    with pytest.raises(CheckoutNotFound) as error:
        find_checkout()
    assert str(error.value).startswith(first) and error.value.origin == "$SLKD_MDISTILLER_PATH"
    with pytest.raises(FetchError) as fetch_error:
        fetch.find_mdistiller_root()
    assert str(fetch_error.value).startswith(first) and "slkd-fetch all --mdistiller-root" in str(fetch_error.value)
    with pytest.raises(BenchError) as bench_error:
        sources.host_root()
    assert str(bench_error.value).startswith(first)
    with pytest.raises(registry.HostNotFound) as host_error:
        registry._put_checkout_on_sys_path()
    assert str(host_error.value).startswith(first) and str(host_error.value).endswith("\n" + registry.INSTALL_HINT)


def test_nothing_found_says_how_to_get_one(clean):
    with pytest.raises(CheckoutNotFound) as error:
        find_checkout()
    message = str(error.value)
    assert error.value.origin is None
    assert message.startswith("mdistiller is not importable and no checkout is named: set SLKD_MDISTILLER_PATH=")
    assert "git clone https://github.com/megvii-research/mdistiller" in message and "a08d46f" in message
    with pytest.raises(registry.HostNotFound) as host_error:
        registry._put_checkout_on_sys_path()
    assert str(host_error.value) == registry.INSTALL_HINT
