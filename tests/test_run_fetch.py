"""Tests for slkd.run.fetch: teacher checkpoints and CIFAR-100, fetched and verified offline.

Everything is built locally in tmp_path: tar archives of checkpoints (real mdistiller
architectures, randomly initialised, or simple stand-in state dicts), fetched with
``archive=`` or through ``file://`` URLs, and a tiny CIFAR-100 folder in torchvision's
pickle format.  Tests marked by the ``cifar_model_dict`` fixture need mdistiller: set
SLKD_MDISTILLER_PATH to a checkout (it is prepended to sys.path) or pip install -e it.
Other tests check the architectures against small fake mdistiller packages.
"""

import contextlib
import functools
import hashlib
import http.server
import importlib
import io
import logging
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

import slkd
from slkd.run import fetch
from slkd.run.fetch import FetchError
from tests.helpers.hosts import path_imports_only

TEACHERS = ["resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13"]
LAYOUT = "download_ckpts/cifar_teachers/{}_vanilla/ckpt_epoch_240.pth"
SLKD_PARENT = Path(slkd.__file__).resolve().parents[1]
HOST = os.environ.get("SLKD_MDISTILLER_PATH")
"""The mdistiller checkout the tests run against (read before the tests unset the variable)."""


@pytest.fixture(autouse=True)
def _no_root_env(monkeypatch, tmp_path_factory):
    """No variable names a checkout, and the working directory is an empty folder: a
    ./mdistiller there (where scripts/quickstart.sh clones it) would be found first."""
    for name in fetch.ROOT_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def env_without_roots():
    """os.environ for a subprocess, without the variables that name an mdistiller checkout."""
    return {k: v for k, v in os.environ.items() if k not in fetch.ROOT_ENV_VARS}


@pytest.fixture(scope="module")
def cifar_model_dict():
    """mdistiller's cifar_model_dict, from SLKD_MDISTILLER_PATH or an installed mdistiller."""
    with pytest.MonkeyPatch.context() as mp:
        if HOST:
            mp.syspath_prepend(HOST)
        try:
            module = importlib.import_module("mdistiller.models.cifar")
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] != "mdistiller":
                raise
            pytest.skip(
                "mdistiller is not importable: set SLKD_MDISTILLER_PATH=/path/to/mdistiller "
                "checkout, or pip install -e it"
            )
        yield module.cifar_model_dict


@pytest.fixture
def no_mdistiller(monkeypatch):
    """Make every mdistiller import fail, as when it is not installed."""
    for name in [n for n in sys.modules if n.split(".")[0] == "mdistiller"] + ["mdistiller"]:
        monkeypatch.setitem(sys.modules, name, None)


def mdistiller_modules():
    return [name for name in sys.modules if name.split(".")[0] == "mdistiller"]


@pytest.fixture
def forget_mdistiller():
    """Let the test import mdistiller afresh; the modules imported before come back afterwards."""
    saved = {name: sys.modules.pop(name) for name in mdistiller_modules()}
    yield
    for name in mdistiller_modules():
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.fixture
def host_checkout(cifar_model_dict, tmp_path):
    """A checkout root whose mdistiller/ is a symlink to the tested mdistiller package."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "mdistiller").symlink_to(Path(importlib.import_module("mdistiller").__file__).parent)
    return checkout


FAKE_CIFAR_MODELS = """
import torch

def stand_in(num_classes):
    model = torch.nn.Module()
    model.fc = torch.nn.Linear({in_features}, num_classes)
    return model

cifar_model_dict = {{name: (stand_in, None) for name in {names!r}}}
"""


def write_fake_mdistiller(root, in_features=8):
    """An mdistiller package under root whose teachers are one Linear(in_features, classes) layer.

    With 8 input features it fits the checkpoints of :func:`stand_in_state`.
    """
    cifar = Path(root) / "mdistiller" / "models" / "cifar"
    cifar.mkdir(parents=True)
    (cifar.parents[1] / "__init__.py").write_text("")
    (cifar.parent / "__init__.py").write_text("")
    (cifar / "__init__.py").write_text(FAKE_CIFAR_MODELS.format(in_features=in_features, names=TEACHERS))
    return Path(root)


# --------------------------------------------------------------------------- archive helpers


def checkpoint_bytes(state, key="model"):
    buffer = io.BytesIO()
    torch.save({key: state, "epoch": 240}, buffer)
    return buffer.getvalue()


def stand_in_state(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(100, 8, generator=generator), "fc.bias": torch.zeros(100)}


def member(name):
    return LAYOUT.format(name).removeprefix("download_ckpts/")


def stand_in_members(seed=0):
    return {member(name): checkpoint_bytes(stand_in_state(seed + i)) for i, name in enumerate(TEACHERS)}


def write_tar(path, files, extra=()):
    """Tar of regular files {member name: bytes}, plus extra prepared TarInfo members."""
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return path


@pytest.fixture
def stand_in_archive(tmp_path):
    return write_tar(tmp_path / "stand_in.tar", stand_in_members())


@pytest.fixture(scope="module")
def real_archive(cifar_model_dict, tmp_path_factory):
    """cifar_teachers.tar with randomly initialised teachers of the real architectures."""
    torch.manual_seed(0)
    files = {
        member(name): checkpoint_bytes(cifar_model_dict[name][0](num_classes=100).state_dict())
        for name in TEACHERS
    }
    return write_tar(tmp_path_factory.mktemp("release") / "cifar_teachers.tar", files)


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def expected_tree():
    """listing() of download_ckpts holding exactly the six teachers, no temporary files."""
    files = [member(name) for name in TEACHERS]
    folders = {"cifar_teachers"} | {str(Path(f).parent) for f in files}
    return sorted(folders | set(files))


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/www over HTTP on localhost (torchvision's downloader needs http, not file://)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(QuietHandler, directory=str(www))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# --------------------------------------------------------------------------- checkout root


def deprecated_if_legacy(variable):
    """Expect the deprecation warning of the old variable name, nothing for the others."""
    if variable == "SLKD_MDISTILLER_ROOT":
        return pytest.warns(FutureWarning, match="SLKD_MDISTILLER_ROOT is deprecated")
    return contextlib.nullcontext()


def test_find_root_explicit(tmp_path):
    (tmp_path / "mdistiller").mkdir()
    assert fetch.find_mdistiller_root(tmp_path) == tmp_path


@pytest.mark.parametrize("variable", ["SLKD_MDISTILLER_PATH", "SLKD_MDISTILLER_ROOT"])
def test_find_root_from_either_variable(tmp_path, monkeypatch, variable):
    (tmp_path / "mdistiller").mkdir()
    monkeypatch.setenv(variable, str(tmp_path))
    with deprecated_if_legacy(variable):
        assert fetch.find_mdistiller_root() == tmp_path


def test_slkd_mdistiller_path_wins_over_root(tmp_path, monkeypatch, caplog):
    for name in ("path", "root"):
        (tmp_path / name / "mdistiller").mkdir(parents=True)
    monkeypatch.setenv("SLKD_MDISTILLER_PATH", str(tmp_path / "path"))
    monkeypatch.setenv("SLKD_MDISTILLER_ROOT", str(tmp_path / "root"))
    assert fetch.find_mdistiller_root() == tmp_path / "path"
    assert f"Ignoring $SLKD_MDISTILLER_ROOT={tmp_path / 'root'}" in caplog.text


def test_cli_reads_slkd_mdistiller_path(no_mdistiller, checkout, stand_in_archive, monkeypatch, capsys):
    monkeypatch.setenv("SLKD_MDISTILLER_PATH", str(checkout))
    assert fetch.main(["teachers", "--archive", str(stand_in_archive), "--no-arch-check"]) == 0
    assert f"mdistiller checkout: {checkout}" in capsys.readouterr().out
    assert all(path.is_file() for path in (checkout / "download_ckpts").rglob("*.pth"))


@pytest.mark.parametrize("variable", [None, "SLKD_MDISTILLER_PATH", "SLKD_MDISTILLER_ROOT"])
def test_find_root_rejects_folder_without_mdistiller(tmp_path, monkeypatch, variable):
    if variable:
        monkeypatch.setenv(variable, str(tmp_path))
    with pytest.raises(FetchError) as error, deprecated_if_legacy(variable):
        fetch.find_mdistiller_root(tmp_path if variable is None else None)
    message = str(error.value)
    source = f"${variable}" if variable else "--mdistiller-root"
    assert message.splitlines()[0].startswith(f"{tmp_path} (from {source}) is not an mdistiller checkout")
    assert "git clone" in message and "pip install -e" in message
    assert "slkd-fetch all --mdistiller-root" in message


def test_find_root_from_importable_package_follows_symlinks(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    (tmp_path / "real" / "mdistiller").mkdir(parents=True)
    (tmp_path / "real" / "mdistiller" / "__init__.py").write_text("")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "mdistiller").symlink_to(tmp_path / "real" / "mdistiller")
    monkeypatch.delitem(sys.modules, "mdistiller", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "link"))
    # mdistiller's paths climb out of its package with "..", which follows the symlink.
    assert fetch.find_mdistiller_root() == tmp_path / "real"


def test_find_root_explains_how_to_install(no_mdistiller):
    with pytest.raises(FetchError, match="not importable") as error:
        fetch.find_mdistiller_root()
    assert "git clone https://github.com/megvii-research/mdistiller" in str(error.value)
    assert "pip install -e" in str(error.value)


# --------------------------------------------------------------------------- teacher paths


def test_teacher_paths_follow_mdistiller_layout(tmp_path):
    assert list(fetch.CIFAR_TEACHERS) == TEACHERS
    for name in TEACHERS:
        assert fetch.teacher_checkpoint_path(tmp_path, name) == tmp_path / LAYOUT.format(name)
    with pytest.raises(ValueError, match="resnet8"):
        fetch.teacher_checkpoint_path(tmp_path, "resnet8")


def test_teacher_paths_match_cifar_model_dict(cifar_model_dict):
    root = fetch.find_mdistiller_root()
    if HOST:
        assert root == Path(HOST).resolve()
    for name in TEACHERS:
        expected = os.path.realpath(cifar_model_dict[name][1])
        assert str(fetch.teacher_checkpoint_path(root, name)) == expected


# --------------------------------------------------------------------------- fetching teachers


def test_fetch_real_architectures_from_archive(cifar_model_dict, real_archive, host_checkout):
    paths = fetch.fetch_cifar_teachers(host_checkout, archive=real_archive)
    assert paths == [host_checkout / LAYOUT.format(name) for name in TEACHERS]
    for name, path in zip(TEACHERS, paths, strict=True):
        state = torch.load(path, map_location="cpu", weights_only=True)["model"]
        cifar_model_dict[name][0](num_classes=100).load_state_dict(state, strict=True)
    assert listing(host_checkout / "download_ckpts") == expected_tree()


def test_fetch_real_architectures_from_file_url(real_archive, host_checkout):
    paths = fetch.fetch_cifar_teachers(host_checkout, real_archive.as_uri())
    assert all(path.is_file() for path in paths)
    downloaded = host_checkout / "download_ckpts" / "cifar_teachers.tar"
    assert downloaded.read_bytes() == real_archive.read_bytes()
    assert sorted(p.name for p in (host_checkout / "download_ckpts").iterdir()) == [
        "cifar_teachers",
        "cifar_teachers.tar",
    ]


def test_cli_puts_checkpoints_where_cifar_model_dict_reads(cifar_model_dict, real_archive, tmp_path):
    """In a fresh copy of the checkout, mdistiller's own paths must point at the fetched files."""
    package_dir = Path(importlib.import_module("mdistiller").__file__).parent
    checkout = tmp_path / "checkout"
    shutil.copytree(package_dir, checkout / "mdistiller", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**env_without_roots(), "PYTHONPATH": str(SLKD_PARENT), "PYTHONDONTWRITEBYTECODE": "1"}
    script = (
        "import os, sys; from slkd.run.fetch import main\n"
        f"assert main(['teachers', '--archive', {str(real_archive)!r}]) == 0\n"
        "from mdistiller.models.cifar import cifar_model_dict as d\n"
        f"print('found', sum(os.path.isfile(d[n][1]) for n in {TEACHERS!r}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert f"mdistiller checkout: {checkout.resolve()}" in run.stdout
    assert "Verified 6 teacher checkpoints" in run.stdout
    assert run.stdout.splitlines()[-1] == "found 6"


def test_wrong_architecture_names_the_file(cifar_model_dict, host_checkout):
    root = host_checkout

    def save(name, arch, num_classes=100):
        path = fetch.teacher_checkpoint_path(root, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(checkpoint_bytes(cifar_model_dict[arch][0](num_classes=num_classes).state_dict()))
        return path

    resnet56 = save("resnet56", "resnet20")
    wrn = save("wrn_40_2", "wrn_40_2", num_classes=10)
    save("vgg13", "vgg13")
    names = ["resnet56", "wrn_40_2", "vgg13"]
    with pytest.raises(FetchError) as error:
        fetch.verify_cifar_teachers(root, names)
    message = str(error.value)
    assert message.splitlines()[0] == (
        f"2 of 3 CIFAR-100 teacher checkpoints are missing or broken; "
        f"fix: slkd-fetch teachers --mdistiller-root {root}"
    )
    assert f"{resnet56}: does not fit architecture resnet56" in message
    assert f"{wrn}: does not fit architecture wrn_40_2" in message
    assert "vgg13" not in message
    assert fetch.verify_cifar_teachers(root, names, check_architecture=False)[0] == resnet56
    fetch.verify_cifar_teachers(root, ["vgg13"])


def test_stand_ins_fail_the_architecture_check(stand_in_archive, host_checkout):
    with pytest.raises(FetchError) as error:
        fetch.fetch_cifar_teachers(host_checkout, archive=stand_in_archive)
    assert str(error.value).startswith(f"{stand_in_archive} did not provide valid teacher checkpoints")
    for name in TEACHERS:
        assert f"{host_checkout / LAYOUT.format(name)}: does not fit architecture" in str(error.value)


def test_architectures_come_from_the_given_root(forget_mdistiller, tmp_path, stand_in_archive, capsys):
    """Stand-in teachers fit the fake architectures of one root and not those of another."""
    fits = write_fake_mdistiller(tmp_path / "fits", in_features=8)
    misfits = write_fake_mdistiller(tmp_path / "misfits", in_features=16)
    archive = ["--archive", str(stand_in_archive)]
    assert fetch.main(["teachers", "--mdistiller-root", str(fits), *archive]) == 0
    assert "Verified 6 teacher checkpoints" in capsys.readouterr().out
    for name in mdistiller_modules():  # the next root is checked in a fresh process, as from the shell
        del sys.modules[name]
    assert fetch.main(["teachers", "--mdistiller-root", str(misfits), *archive]) == 1
    err = capsys.readouterr().err
    assert f"{misfits / LAYOUT.format('vgg13')}: does not fit architecture stand_in" in err


def test_root_without_architectures_fails_unless_opted_out(
    forget_mdistiller, checkout, stand_in_archive, monkeypatch, capsys
):
    """Whatever mdistiller is installed: an editable install's finder would otherwise supply
    ``mdistiller.models`` from the installed checkout (then the refusal below says so)."""
    path_imports_only(monkeypatch)
    (checkout / "mdistiller" / "__init__.py").write_text("")  # a package without models/
    argv = ["teachers", "--mdistiller-root", str(checkout), "--archive", str(stand_in_archive)]
    assert fetch.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"slkd-fetch: error: Cannot import the teacher architectures from {checkout}/mdistiller "
    )
    assert f"skip the check with: slkd-fetch teachers --mdistiller-root {checkout} --no-arch-check" in err
    assert "Traceback" not in err
    assert not (checkout / "download_ckpts").exists()
    assert fetch.main(argv + ["--no-arch-check"]) == 0
    assert "Verified 6 teacher checkpoints" in capsys.readouterr().out


def test_architectures_from_another_mdistiller_are_refused(
    forget_mdistiller, checkout, stand_in_archive, tmp_path, monkeypatch, capsys
):
    """The root's mdistiller/ has no __init__.py, so a fitting mdistiller later on sys.path would win."""
    other = write_fake_mdistiller(tmp_path / "other")
    monkeypatch.syspath_prepend(str(other))
    argv = ["teachers", "--mdistiller-root", str(checkout), "--archive", str(stand_in_archive)]
    assert fetch.main(argv) == 1
    err = capsys.readouterr().err
    found = other / "mdistiller" / "models" / "cifar" / "__init__.py"
    assert err.startswith(
        f"slkd-fetch: error: The teacher architectures came from {found}, not from {checkout}/mdistiller"
    )
    assert f"--mdistiller-root {checkout} --no-arch-check" in err
    assert sys.path[0] == str(other)


@pytest.mark.parametrize(
    "defect, expected",
    [
        ("missing", "missing"),
        ("truncated", "cannot be loaded"),
        ("garbage", "cannot be loaded"),
        ("no model key", 'has no "model" state_dict'),
    ],
)
def test_broken_checkpoint_names_the_file(tmp_path, defect, expected):
    files = stand_in_members()
    name = member("resnet110")
    if defect == "missing":
        del files[name]
    elif defect == "truncated":
        files[name] = files[name][: len(files[name]) // 2]
    elif defect == "garbage":
        files[name] = b"<html>Not Found</html>"
    else:
        files[name] = checkpoint_bytes(stand_in_state(), key="state_dict")
    archive = write_tar(tmp_path / "release.tar", files)
    root = tmp_path / "root"
    with pytest.raises(FetchError) as error:
        fetch.fetch_cifar_teachers(root, archive=archive, check_architecture=False)
    message = str(error.value)
    assert f"resnet110: {root / LAYOUT.format('resnet110')}: {expected}" in message
    assert message.startswith(f"{archive} did not provide valid teacher checkpoints, so nothing in {root / 'download_ckpts'} was replaced. 1 of 6")
    assert all(f"  {other}:" not in message for other in TEACHERS if other != "resnet110")
    assert f"slkd-fetch teachers --mdistiller-root {root}" in message


UNSAFE = {
    "dotdot": ("../evil", tarfile.REGTYPE, ""),
    "nested": ("cifar_teachers/../../evil", tarfile.REGTYPE, ""),
    "absolute": ("/tmp/slkd-evil", tarfile.REGTYPE, ""),
    "symlink": ("cifar_teachers/link", tarfile.SYMTYPE, "../../evil"),
    "hardlink": ("cifar_teachers/hard", tarfile.LNKTYPE, "/etc/passwd"),
    "fifo": ("cifar_teachers/pipe", tarfile.FIFOTYPE, ""),
}


def unsafe_member(kind):
    name, member_type, linkname = UNSAFE[kind]
    info = tarfile.TarInfo(name)
    info.type, info.linkname = member_type, linkname
    return info


@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_unsafe_archive_is_refused(tmp_path, kind):
    archive = write_tar(tmp_path / "evil.tar", stand_in_members(), extra=[unsafe_member(kind)])
    root = tmp_path / "root"
    with pytest.raises(FetchError, match="Refusing to extract") as error:
        fetch.fetch_cifar_teachers(root, archive=archive, check_architecture=False)
    assert UNSAFE[kind][0] in str(error.value)
    assert listing(root / "download_ckpts") == []
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("damage", ["not a tar", "cut short"])
def test_damaged_archive_leaves_checkpoints_untouched(tmp_path, stand_in_archive, damage):
    fetch.fetch_cifar_teachers(tmp_path, archive=stand_in_archive, check_architecture=False)
    before = {p: p.read_bytes() for p in (tmp_path / "download_ckpts").rglob("*.pth")}
    data = stand_in_archive.read_bytes()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\x00garbage" * 100 if damage == "not a tar" else data[: len(data) // 2])
    with pytest.raises(FetchError, match="Could not extract") as error:
        fetch.fetch_cifar_teachers(tmp_path, archive=bad, force=True, check_architecture=False)
    assert str(bad) in str(error.value)
    assert {p: p.read_bytes() for p in (tmp_path / "download_ckpts").rglob("*.pth")} == before
    assert listing(tmp_path / "download_ckpts") == expected_tree()


def test_rerun_skips_and_force_extracts_again(tmp_path, stand_in_archive, caplog):
    caplog.set_level(logging.INFO, logger=fetch.__name__)
    paths = fetch.fetch_cifar_teachers(tmp_path, archive=stand_in_archive, check_architecture=False)
    original = paths[0].read_bytes()
    paths[0].write_bytes(checkpoint_bytes(stand_in_state(seed=99)))  # still valid, but different
    gone = tmp_path / "gone.tar"  # neither read nor downloaded when nothing is needed
    assert fetch.fetch_cifar_teachers(tmp_path, archive=gone, check_architecture=False) == paths
    assert fetch.fetch_cifar_teachers(tmp_path, gone.as_uri(), check_architecture=False) == paths
    assert "already present and valid" in caplog.text
    assert paths[0].read_bytes() != original
    fetch.fetch_cifar_teachers(tmp_path, archive=stand_in_archive, force=True, check_architecture=False)
    assert paths[0].read_bytes() == original


def test_broken_teacher_is_fetched_again_without_force(tmp_path, stand_in_archive):
    paths = fetch.fetch_cifar_teachers(tmp_path, archive=stand_in_archive, check_architecture=False)
    original = paths[2].read_bytes()
    paths[2].write_bytes(original[:100])
    fetch.fetch_cifar_teachers(tmp_path, archive=stand_in_archive, check_architecture=False)
    assert paths[2].read_bytes() == original


def test_fetch_over_http(tmp_path, stand_in_archive, http_server):
    www, base_url = http_server
    shutil.copy(stand_in_archive, www / "cifar_teachers.tar")
    paths = fetch.fetch_cifar_teachers(
        tmp_path / "root", f"{base_url}/cifar_teachers.tar", check_architecture=False
    )
    assert paths == [tmp_path / "root" / LAYOUT.format(name) for name in TEACHERS]
    downloaded = tmp_path / "root" / "download_ckpts" / "cifar_teachers.tar"
    assert downloaded.read_bytes() == stand_in_archive.read_bytes()


class ShortResponse(io.BytesIO):
    """A urlopen response that announces more bytes than it delivers."""

    headers = {"Content-Length": "1000000"}


def test_interrupted_download_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: ShortResponse(b"x" * 1000))
    with pytest.raises(FetchError, match="stopped after 1000 of 1000000 bytes") as error:
        fetch.fetch_cifar_teachers(
            tmp_path, "https://example.invalid/cifar_teachers.tar", check_architecture=False
        )
    assert "https://example.invalid/cifar_teachers.tar" in str(error.value)
    assert listing(tmp_path / "download_ckpts") == []


def test_unreachable_url_suggests_archive(tmp_path):
    url = (tmp_path / "nowhere.tar").as_uri()
    with pytest.raises(FetchError) as error:
        fetch.fetch_cifar_teachers(tmp_path, url, check_architecture=False)
    message = str(error.value)
    assert url in message
    assert f"slkd-fetch teachers --mdistiller-root {tmp_path} --archive FILE" in message
    assert listing(tmp_path / "download_ckpts") == []


CUT_SHORT = {
    # Announces 5000 bytes and sends 2000 of them, then closes: http.client.IncompleteRead.
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1388\r\n"
    + b"x" * 2000,
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n" + b"x" * 2000,
}


@pytest.fixture(params=sorted(CUT_SHORT))
def cut_short_url(request):
    """URL of a local HTTP server whose every response stops before its announced end."""
    with socket.create_server(("127.0.0.1", 0)) as server:

        def serve():
            while True:
                try:
                    connection, _ = server.accept()
                except OSError:  # the listening socket was shut down
                    return
                with connection:
                    connection.recv(65536)
                    connection.sendall(CUT_SHORT[request.param])

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.getsockname()[1]}/archive"
        server.shutdown(socket.SHUT_RDWR)
        thread.join()


def test_cut_short_teacher_download_is_an_error(tmp_path, cut_short_url):
    with pytest.raises(FetchError) as error:
        fetch.fetch_cifar_teachers(tmp_path, cut_short_url, check_architecture=False)
    assert str(error.value).startswith(f"Could not download {cut_short_url} ")
    assert f"retry with: slkd-fetch teachers --mdistiller-root {tmp_path}" in str(error.value)
    assert listing(tmp_path / "download_ckpts") == []


def test_cut_short_cifar100_download_is_an_error(tmp_path, monkeypatch, cut_short_url):
    monkeypatch.setattr(datasets.CIFAR100, "url", cut_short_url)
    with pytest.raises(FetchError) as error:
        fetch.fetch_cifar100(tmp_path)
    assert str(error.value).startswith(f"Could not download CIFAR-100 into {tmp_path / 'data'} ")
    assert f"retry with: slkd-fetch cifar100 --mdistiller-root {tmp_path}" in str(error.value)


@pytest.mark.parametrize("what, folder", [("teachers", "download_ckpts"), ("cifar100", "data")])
def test_file_in_place_of_a_folder_is_an_error(checkout, capsys, what, folder):
    (checkout / folder).write_text("")
    extra = ["--archive", "unused.tar", "--no-arch-check"] if what == "teachers" else []
    assert fetch.main([what, "--mdistiller-root", str(checkout), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"slkd-fetch: error: Cannot create the folder {checkout / folder} (FileExistsError")
    assert f"move it away, then run: slkd-fetch {what} --mdistiller-root {checkout}" in err


@pytest.mark.parametrize("what", ["teachers", "cifar100"])
def test_unwritable_checkout_is_an_error(checkout, monkeypatch, capsys, what):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    extra = ["--archive", "unused.tar", "--no-arch-check"] if what == "teachers" else []
    assert fetch.main([what, "--mdistiller-root", str(checkout), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"slkd-fetch: error: Cannot create the folder {checkout}/")
    assert "(PermissionError" in err and "make the checkout writable" in err


# --------------------------------------------------------------------------- command line


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "checkout" / "mdistiller").mkdir(parents=True)
    return tmp_path / "checkout"


def test_cli_fetches_then_skips(no_mdistiller, checkout, stand_in_archive, capsys):
    argv = ["teachers", "--mdistiller-root", str(checkout), "--archive", str(stand_in_archive)]
    argv.append("--no-arch-check")
    assert fetch.main(argv) == 0
    out = capsys.readouterr().out
    assert f"Extracted 6 files from {stand_in_archive}" in out and "Verified 6 teacher checkpoints" in out
    assert fetch.main(argv) == 0
    assert "already present and valid" in capsys.readouterr().out
    assert fetch.main(argv + ["--force"]) == 0
    assert "Extracted 6 files" in capsys.readouterr().out


def test_cli_error_exits_1_without_traceback(checkout, tmp_path, capsys):
    missing = tmp_path / "missing.tar"
    argv = ["teachers", "--mdistiller-root", str(checkout), "--archive", str(missing), "--no-arch-check"]
    assert fetch.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("slkd-fetch: error: Could not extract") and str(missing) in err
    assert f"slkd-fetch teachers --mdistiller-root {checkout}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("option", ["--force", "--no-arch-check"])
def test_cli_rejects_teacher_options_for_cifar100(capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        fetch.main(["cifar100", option])
    assert exit_info.value.code == 2
    assert "apply to the teachers only" in capsys.readouterr().err


def test_python_m_error_exits_1_without_traceback(tmp_path):
    env = {**env_without_roots(), "PYTHONPATH": str(SLKD_PARENT)}
    run = subprocess.run(
        [sys.executable, "-m", "slkd.run.fetch", "all", "--mdistiller-root", str(tmp_path / "nope")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1
    assert "slkd-fetch: error:" in run.stderr and str(tmp_path / "nope") in run.stderr
    assert "Traceback" not in run.stderr


# --------------------------------------------------------------------------- CIFAR-100


class Py2Str(bytes):
    """Pickled as a Python 2 ``str``, as in the real CIFAR files (bytes keys under encoding='bytes')."""


class Py2Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        assert len(obj) < 256
        self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2_str


def dump_py2(obj, path):
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def write_fake_cifar100(data_dir, sizes, bad_label=None):
    """A tiny cifar-100-python folder: train, test and meta in the original pickle format."""
    folder = Path(data_dir) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, size in sizes.items():
        labels = [int(label) for label in rng.integers(0, 100, size)]
        if bad_label is not None and split == "train":
            labels[-1] = bad_label
        dump_py2(
            {
                Py2Str(b"filenames"): [Py2Str(b"img_%d.png" % i) for i in range(size)],
                Py2Str(b"batch_label"): Py2Str(split.encode()),
                Py2Str(b"fine_labels"): labels,
                Py2Str(b"coarse_labels"): [label // 5 for label in labels],
                Py2Str(b"data"): rng.integers(0, 256, (size, 3072), dtype=np.uint8),
            },
            folder / split,
        )
    names = {
        Py2Str(b"fine_label_names"): [Py2Str(b"class%d" % i) for i in range(100)],
        Py2Str(b"coarse_label_names"): [Py2Str(b"super%d" % i) for i in range(20)],
    }
    dump_py2(names, folder / "meta")
    return folder


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def trust_files(monkeypatch, folder):
    """Point torchvision's md5 lists at the fake files, so its real integrity check passes."""
    monkeypatch.setattr(datasets.CIFAR100, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(datasets.CIFAR100, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(datasets.CIFAR100, "meta", {**datasets.CIFAR100.meta, "md5": md5(folder / "meta")})


SIZES = {"train": 12, "test": 5}


@pytest.fixture
def small_cifar(monkeypatch):
    monkeypatch.setattr(fetch, "CIFAR100_SPLIT_SIZES", SIZES)


def test_fake_cifar_has_the_original_pickle_format(tmp_path):
    folder = write_fake_cifar100(tmp_path, SIZES)
    with open(folder / "train", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (12, 3072)
    assert len(entry[b"fine_labels"]) == 12
    with open(folder / "meta", "rb") as f:
        assert len(pickle.load(f, encoding="bytes")[b"fine_label_names"]) == 100


def test_verify_cifar100_accepts_a_good_folder(tmp_path, monkeypatch, small_cifar):
    folder = write_fake_cifar100(tmp_path / "data", SIZES)
    trust_files(monkeypatch, folder)
    assert fetch.verify_cifar100(tmp_path) == folder == fetch.cifar100_folder(tmp_path)


def test_verify_cifar100_real_sizes_by_default(tmp_path, monkeypatch):
    trust_files(monkeypatch, write_fake_cifar100(tmp_path / "data", SIZES))
    with pytest.raises(FetchError, match="train: has 12 images and 12 labels, expected 50000"):
        fetch.verify_cifar100(tmp_path)


def test_verify_cifar100_missing_folder(tmp_path):
    with pytest.raises(FetchError) as error:
        fetch.verify_cifar100(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "data" / "cifar-100-python") in message and "missing" in message
    assert f"slkd-fetch cifar100 --mdistiller-root {tmp_path}" in message


@pytest.mark.parametrize("label", [100, -1])
def test_verify_cifar100_label_out_of_range(tmp_path, monkeypatch, small_cifar, label):
    trust_files(monkeypatch, write_fake_cifar100(tmp_path / "data", SIZES, bad_label=label))
    with pytest.raises(FetchError, match=r"train: has labels in .*expected 0\.\.99") as error:
        fetch.verify_cifar100(tmp_path)
    assert "test:" not in str(error.value)


@pytest.mark.parametrize("name", ["train", "test", "meta"])
def test_verify_cifar100_reports_a_corrupt_file(tmp_path, monkeypatch, small_cifar, name):
    folder = write_fake_cifar100(tmp_path / "data", SIZES)
    trust_files(monkeypatch, folder)
    trusted = md5(folder / name)
    (folder / name).write_bytes((folder / name).read_bytes()[:-10])
    with pytest.raises(FetchError) as error:
        fetch.verify_cifar100(tmp_path)
    lines = str(error.value).splitlines()
    fix = f"slkd-fetch cifar100 --mdistiller-root {tmp_path}"
    assert lines[0] == f"CIFAR-100 at {folder} is missing or broken; fix: {fix}"
    assert lines[1:] == [f"  {name}: corrupt (md5 {md5(folder / name)}, expected {trusted})"]


def test_verify_cifar100_checks_structure_of_trusted_files(tmp_path, monkeypatch, small_cifar):
    """Files whose md5s are trusted must still hold the expected number of images."""
    trust_files(monkeypatch, write_fake_cifar100(tmp_path / "data", {"train": 12, "test": 4}))
    with pytest.raises(FetchError, match="test: has 4 images"):
        fetch.verify_cifar100(tmp_path)


def serve_release(http_server, monkeypatch):
    """Put a fake cifar-100-python.tar.gz on the server and point torchvision at it."""
    www, base_url = http_server
    folder = write_fake_cifar100(www.parent / "source", SIZES)
    trust_files(monkeypatch, folder)
    tgz = www / "cifar-100-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    monkeypatch.setattr(datasets.CIFAR100, "url", f"{base_url}/{tgz.name}")
    monkeypatch.setattr(datasets.CIFAR100, "tgz_md5", md5(tgz))


def test_fetch_cifar100_downloads_and_verifies(tmp_path, monkeypatch, small_cifar, http_server, capsys):
    serve_release(http_server, monkeypatch)
    (tmp_path / "checkout" / "mdistiller").mkdir(parents=True)
    root = tmp_path / "checkout"
    assert fetch.fetch_cifar100(root) == root / "data" / "cifar-100-python"
    assert sorted(p.name for p in (root / "data" / "cifar-100-python").iterdir()) == ["meta", "test", "train"]
    assert fetch.main(["cifar100", "--mdistiller-root", str(root)]) == 0
    assert "CIFAR-100 verified at" in capsys.readouterr().out


def test_fetch_cifar100_download_failure(tmp_path, monkeypatch, small_cifar, http_server):
    monkeypatch.setattr(datasets.CIFAR100, "url", f"{http_server[1]}/nowhere.tar.gz")
    with pytest.raises(FetchError) as error:
        fetch.fetch_cifar100(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "data") in message
    assert f"slkd-fetch cifar100 --mdistiller-root {tmp_path}" in message


def test_fetch_cifar100_repairs_a_corrupt_meta(tmp_path, monkeypatch, small_cifar, http_server, capsys):
    """torchvision's own download() checks only train and test, so a broken meta used to stay broken."""
    serve_release(http_server, monkeypatch)
    root = tmp_path / "checkout"
    (root / "mdistiller").mkdir(parents=True)
    folder = fetch.fetch_cifar100(root)
    good = (folder / "meta").read_bytes()
    (folder / "meta").write_bytes(good[:-20])
    (root / "data" / "cifar-100-python.tar.gz").unlink()  # the archive is fetched again
    assert fetch.main(["cifar100", "--mdistiller-root", str(root)]) == 0
    assert (folder / "meta").read_bytes() == good
    out = capsys.readouterr().out
    assert f"Removing {folder / 'meta'}: corrupt (md5 " in out and "CIFAR-100 verified at" in out
    assert fetch.main(["cifar100", "--mdistiller-root", str(root)]) == 0
    assert "match their md5s; nothing downloaded" in capsys.readouterr().out


def test_fetch_cifar100_removes_a_corrupt_file_before_fetching(
    tmp_path, monkeypatch, small_cifar, http_server
):
    folder = write_fake_cifar100(tmp_path / "data", SIZES)
    trust_files(monkeypatch, folder)
    (folder / "meta").write_bytes(b"garbage")
    monkeypatch.setattr(datasets.CIFAR100, "url", f"{http_server[1]}/nowhere.tar.gz")
    with pytest.raises(FetchError, match="Could not download CIFAR-100"):
        fetch.fetch_cifar100(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["test", "train"]


def test_a_bad_archive_replaces_no_good_checkpoint(tmp_path):
    """--force with an archive whose checkpoints fail the check: the files already in place
    are kept, not overwritten by the archive's."""
    root = tmp_path / "root"
    fetch.fetch_cifar_teachers(root, archive=write_tar(tmp_path / "good.tar", stand_in_members()), check_architecture=False)
    good = {name: (root / LAYOUT.format(name)).read_bytes() for name in TEACHERS}
    files = stand_in_members()
    files[member("resnet110")] = b"<html>Not Found</html>"
    with pytest.raises(FetchError, match="did not provide valid teacher checkpoints, so nothing in .* was replaced"):
        fetch.fetch_cifar_teachers(root, archive=write_tar(tmp_path / "bad.tar", files), force=True, check_architecture=False)
    assert {name: (root / LAYOUT.format(name)).read_bytes() for name in TEACHERS} == good
    assert not [path for path in (root / "download_ckpts").iterdir() if path.name.startswith(".slkd-extract-")]
