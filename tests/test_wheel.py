"""slkd as a wheel, without its source checkout: the configs ship inside the package, and
slkd-train and slkd-bench work from an empty folder.

The wheel is built from a copy of the tracked sources, installed with ``--no-deps`` into a
fresh virtual environment that sees this environment's site-packages (torch and slkd's
requirements, already on disk) through a ``.pth`` file, after its own. mdistiller is a
writable copy of the checkout the other tests use (tests/helpers/hosts.py).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slkd.errors import CheckoutNotFound
from slkd.host.checkout import find_checkout
from tests.helpers.hosts import MDISTILLER, missing, writable_copy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("slkd", "mdistiller_configs", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in")
CONFIG = "cifar100/sld/res32x4_res8x4.yaml"
PAIR = "res56_res20"  # the quickest pair on a CPU


def run(command, cwd, env, timeout=900):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh environment's bin folder, the environment its commands run in, an empty
    folder, the fresh environment's site-packages)."""
    try:
        host = find_checkout().root
    except CheckoutNotFound as error:
        pytest.skip(missing(MDISTILLER, f"no mdistiller checkout ({str(error).splitlines()[0]})"))
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"), str(source)]
    if importlib.util.find_spec("wheel"):  # else pip fetches pyproject.toml's build requirements
        build.insert(4, "--no-build-isolation")
    run(build, cwd=base, env=dict(os.environ))
    (wheel,) = (base / "dist").glob("slkd-*.whl")

    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base, env=dict(os.environ))
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    ours = [path for path in sys.path if path.endswith("site-packages") and Path(path).is_dir()]
    (site / "zz_parent_site_packages.pth").write_text("\n".join(ours) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], cwd=base, env=dict(os.environ))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SLKD_MDISTILLER_ROOT")}
    env["SLKD_MDISTILLER_PATH"] = str(writable_copy(host, base / "mdistiller"))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    empty = base / "empty"
    empty.mkdir()
    return venv / "bin", env, empty, site


def test_the_wheel_carries_the_configs_and_runs_from_its_own_install(installed):
    bin_folder, env, empty, site = installed
    code = "import slkd, slkd.shipped as s; print(slkd.__file__); print(s.configs_folder())"
    module, configs = run([str(bin_folder / "python"), "-c", code], cwd=empty, env=env).stdout.split()
    assert Path(module).is_relative_to(site) and Path(configs) == site / "slkd" / "mdistiller_configs"
    shipped = sorted(p.relative_to(ROOT / "mdistiller_configs") for p in (ROOT / "mdistiller_configs").rglob("*.yaml"))
    assert sorted(p.relative_to(configs) for p in Path(configs).rglob("*.yaml")) == shipped
    for name in shipped:
        assert (Path(configs) / name).read_bytes() == (ROOT / "mdistiller_configs" / name).read_bytes()


def test_slkd_train_takes_a_shipped_config_by_name_from_an_empty_folder(installed):
    bin_folder, env, empty, _ = installed
    folder = empty / "train"
    folder.mkdir()
    result = run([str(bin_folder / "slkd-train"), "--cfg", CONFIG, "--smoke", "--device", "cpu"], cwd=folder, env=env)
    assert "epoch 2/2" in result.stdout
    (summary,) = folder.glob("output/**/summary.json")
    assert json.loads(summary.read_text())["views"] == 2


def test_a_name_that_matches_nothing_lists_the_closest_shipped_configs(installed):
    bin_folder, env, empty, _ = installed
    command = [str(bin_folder / "slkd-train"), "--cfg", "cifar100/sld/res32x4_res8x.yaml", "--smoke", "--device", "cpu"]
    result = subprocess.run(command, cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("slkd-train: error: config file cifar100/sld/res32x4_res8x.yaml is neither a file here")
    assert "closest shipped: cifar100/sld/res32x4_res8x4.yaml" in line


def test_slkd_bench_runs_two_methods_and_reports_from_an_empty_folder(installed):
    bin_folder, env, empty, _ = installed
    folder = empty / "bench"
    folder.mkdir()
    command = [str(bin_folder / "slkd-bench"), "run", "--smoke", "--pair", PAIR, "--methods", "KD,SLD", "--seeds", "0", "--out", "runs"]
    result = run(command, cwd=folder, env=env)
    assert "0 failed" in result.stdout
    report = run([str(bin_folder / "slkd-bench"), "report", "runs"], cwd=folder, env=env).stdout
    assert "[slkd-bench] wrote runs/smoke/summary.csv" in report  # smoke runs are kept apart
    rows = (folder / "runs" / "smoke" / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and {"KD", "SLD"} <= {cell for row in rows[1:] for cell in row.split(",")}
