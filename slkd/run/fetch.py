"""Fetch and verify what an mdistiller checkout needs for CIFAR-100 runs.

mdistiller finds its pretrained CIFAR-100 teachers and the dataset by paths
relative to its checkout root:

* ``<root>/download_ckpts/cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth``
  (``cifar_model_dict`` in ``mdistiller/models/cifar/__init__.py``), shipped
  as the release archive ``cifar_teachers.tar``;
* ``<root>/data/cifar-100-python`` (torchvision's ``CIFAR100`` layout).

This module downloads both into place and verifies them, so that a broken or
partial download is reported before a training run, naming the file and the
command that repairs it.  Command line::

    slkd-fetch {teachers,cifar100,all} [--mdistiller-root PATH]
               [--archive FILE] [--url URL] [--force] [--no-arch-check]

(also ``python -m slkd.run.fetch``).  The checkout root is found as every slkd
command finds it (:mod:`slkd.host.checkout`): ``--mdistiller-root``, else
``$SLKD_MDISTILLER_PATH``, else ``./mdistiller``, else the folder above the
importable ``mdistiller`` package.  The teachers are checked against the architectures of
the mdistiller package inside that root, unless ``--no-arch-check``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import logging
import os
import shlex
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torchvision import datasets
from torchvision.datasets.utils import calculate_md5, download_and_extract_archive

from slkd.errors import FetchError
from slkd.host.checkout import CLONE_HINT, ENV_VAR, LEGACY_ENV_VARS, CheckoutNotFound, find_checkout

__all__ = [
    "CIFAR100_SPLIT_SIZES",
    "CIFAR_TEACHERS",
    "DEFAULT_URL",
    "FetchError",
    "ROOT_ENV_VARS",
    "cifar100_folder",
    "fetch_cifar100",
    "fetch_cifar_teachers",
    "find_mdistiller_root",
    "main",
    "teacher_checkpoint_path",
    "verify_cifar100",
    "verify_cifar_teachers",
]

_LOG = logging.getLogger(__name__)

DEFAULT_URL = "https://github.com/megvii-research/mdistiller/releases/download/v1.0/cifar_teachers.tar"
"""Release archive holding ``cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth``."""

ROOT_ENV_VARS = (ENV_VAR, *LEGACY_ENV_VARS)
"""Environment variables naming the mdistiller checkout root (:mod:`slkd.host.checkout`)."""

CKPT_DIR = "download_ckpts"
TEACHERS_ARCHIVE_NAME = "cifar_teachers.tar"

CIFAR_TEACHERS: Mapping[str, str] = {
    name: f"{CKPT_DIR}/cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth"
    for name in ("resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13")
}
"""Teacher name (a ``cifar_model_dict`` key) -> checkpoint path relative to the checkout root."""

NUM_CLASSES = 100
CIFAR100_SPLIT_SIZES: Mapping[str, int] = {"train": 50000, "test": 10000}
"""Number of images each CIFAR-100 split must hold."""

_DOWNLOAD_CHUNK = 1 << 20



def _command(*args: object) -> str:
    """The shell command ``slkd-fetch ARGS``, quoted for copy and paste."""
    return " ".join(["slkd-fetch", *(shlex.quote(str(arg)) for arg in args)])


# --------------------------------------------------------------------------- checkout


def find_mdistiller_root(explicit: str | os.PathLike | None = None) -> Path:
    """Return the root of the mdistiller checkout, by :func:`slkd.host.checkout.find_checkout`'s
    rule (``explicit``, ``$SLKD_MDISTILLER_PATH``, ``./mdistiller``, the installed mdistiller),
    or raise :class:`FetchError` saying how to name one.
    """
    try:
        return find_checkout(explicit).root
    except CheckoutNotFound as exc:
        raise FetchError(
            f"{exc}\n  e.g.: " + _command("all", "--mdistiller-root", "/path/to/mdistiller")
        ) from None


# --------------------------------------------------------------------------- teachers


def teacher_checkpoint_path(root: str | os.PathLike, name: str) -> Path:
    """Where mdistiller's ``cifar_model_dict`` expects teacher ``name``'s checkpoint."""
    if name not in CIFAR_TEACHERS:
        raise ValueError(f"unknown CIFAR-100 teacher {name!r}; known: {', '.join(CIFAR_TEACHERS)}")
    return Path(root) / CIFAR_TEACHERS[name]


def fetch_cifar_teachers(
    root: str | os.PathLike,
    url: str = DEFAULT_URL,
    *,
    archive: str | os.PathLike | None = None,
    force: bool = False,
    check_architecture: bool = True,
) -> list[Path]:
    """Put the CIFAR-100 teacher checkpoints under ``<root>/download_ckpts`` and verify them.

    Nothing is downloaded when every checkpoint is already present and valid,
    unless ``force``.  Otherwise the tar archive is taken from ``archive`` (a
    local file) or downloaded from ``url`` to
    ``<root>/download_ckpts/cifar_teachers.tar``, extracted safely, and the
    checkpoints are verified as by :func:`verify_cifar_teachers`, against the
    architectures of ``<root>/mdistiller`` when ``check_architecture``.

    Returns the checkpoint paths; raises :class:`FetchError` naming every
    missing or broken checkpoint.
    """
    root = Path(os.path.abspath(root))
    builders = _teacher_builders(root) if check_architecture else {}
    if not check_architecture:
        _LOG.warning("Teacher checkpoints are not checked against mdistiller's architectures.")
    fix = _command("teachers", "--mdistiller-root", root)
    if not force:
        with contextlib.suppress(FetchError):
            paths = _verified_teachers(root / CKPT_DIR, CIFAR_TEACHERS, builders, fix)
            _LOG.info(
                "All %d teacher checkpoints are already present and valid under %s; "
                "nothing fetched (use --force to fetch again).",
                len(paths),
                root / CKPT_DIR,
            )
            return paths
    ckpt_dir = _make_folder(root / CKPT_DIR, fix)
    if archive is None:
        archive = _download(url, ckpt_dir / TEACHERS_ARCHIVE_NAME, fix)

    def verified_before_placing(staging: Path) -> None:
        try:
            _verified_teachers(staging, CIFAR_TEACHERS, builders, fix, shown_dir=ckpt_dir)
        except FetchError as exc:
            raise FetchError(f"{archive} did not provide valid teacher checkpoints, so nothing in {ckpt_dir} was replaced. {exc}") from None

    extracted = _extract_tar_safely(Path(archive), ckpt_dir, fix, check=verified_before_placing)
    _LOG.info("Extracted %d files from %s into %s", len(extracted), archive, ckpt_dir)
    paths = [teacher_checkpoint_path(root, name) for name in CIFAR_TEACHERS]
    _LOG.info("Verified %d teacher checkpoints under %s", len(paths), ckpt_dir)
    return paths


def verify_cifar_teachers(
    root: str | os.PathLike,
    names: Iterable[str] | None = None,
    check_architecture: bool = True,
) -> list[Path]:
    """Check the teacher checkpoints under ``root``; return their paths.

    Each checkpoint must exist, load with ``torch.load(map_location="cpu",
    weights_only=True)`` (as mdistiller's ``load_checkpoint`` does on
    torch >= 2.6), hold a ``"model"`` state_dict of tensors and, when
    ``check_architecture``, load with ``strict=True`` into the
    ``cifar_model_dict`` architecture of the mdistiller package in
    ``<root>/mdistiller``, built with ``num_classes=100``.  Raises
    :class:`FetchError` listing every failure, or saying why the
    architectures cannot be imported from ``root``.
    """
    root = Path(os.path.abspath(root))
    builders = _teacher_builders(root) if check_architecture else {}
    fix = _command("teachers", "--mdistiller-root", root)
    return _verified_teachers(root / CKPT_DIR, CIFAR_TEACHERS if names is None else names, builders, fix)


def _verified_teachers(
    ckpt_dir: Path,
    names: Iterable[str],
    builders: Mapping[str, Callable[..., torch.nn.Module]],
    fix: str,
    shown_dir: Path | None = None,
) -> list[Path]:
    """Paths of checkpoints ``names`` in ``ckpt_dir`` (a checkout's ``download_ckpts``, or an
    archive extracted in a staging folder); FetchError listing every broken one, with ``fix``.

    A checkpoint is checked against ``builders[name]`` when present. The error names each
    file as it lies under ``shown_dir`` (default ``ckpt_dir``): for a staging folder, where
    the file was to be placed.
    """
    names = list(names)
    paths, problems = [], []
    for name in names:
        relative = teacher_checkpoint_path(".", name).relative_to(CKPT_DIR)
        path = ckpt_dir / relative
        problem = _checkpoint_problem(path, builders.get(name))
        if problem:
            problems.append(f"  {name}: {(shown_dir or ckpt_dir) / relative}: {problem}")
        paths.append(path)
    if problems:
        raise FetchError(
            f"{len(problems)} of {len(names)} CIFAR-100 teacher checkpoints are missing or broken; fix: {fix}\n"
            + "\n".join(problems)
        )
    return paths


def _teacher_builders(root: Path) -> dict[str, Callable[..., torch.nn.Module]]:
    """Teacher name -> model constructor from the mdistiller package in ``<root>/mdistiller``.

    ``root`` comes first on ``sys.path`` for the import, and the module found
    must lie in ``<root>/mdistiller``: the checkpoints of a checkout are checked
    against that checkout's architectures, never another mdistiller's.
    """
    package = (root / "mdistiller").resolve()
    skip = _command("teachers", "--mdistiller-root", root, "--no-arch-check")
    try:
        with _first_on_sys_path(root):
            cifar = importlib.import_module("mdistiller.models.cifar")
        builders = {name: cifar.cifar_model_dict[name][0] for name in CIFAR_TEACHERS}
    except Exception as exc:  # importing a checkout's code can fail in any way
        raise FetchError(
            f"Cannot import the teacher architectures from {package} ({_summary(exc)}): "
            f"install a complete mdistiller checkout there, or skip the check with: {skip}\n"
            f"  clone and install mdistiller with: {CLONE_HINT}"
        ) from None
    found = Path(cifar.__file__).resolve()
    if not found.is_relative_to(package):
        raise FetchError(
            f"The teacher architectures came from {found}, not from {package}: make {package} "
            f"a complete mdistiller package, or skip the check with: {skip}\n"
            f"  (another mdistiller was imported first, or {package} has no __init__.py)"
        )
    return builders


@contextlib.contextmanager
def _first_on_sys_path(folder: Path):
    """Put ``folder`` first on ``sys.path`` for the duration of the block."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def _make_folder(folder: Path, fix: str) -> Path:
    """Create ``folder`` (and its parents) if needed; return it, or raise FetchError naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise FetchError(
            f"Cannot create the folder {folder} ({_summary(exc)}): a file stands where a folder "
            f"is needed; move it away, then run: {fix}"
        ) from None
    except OSError as exc:
        raise FetchError(
            f"Cannot create the folder {folder} ({_summary(exc)}): make the checkout writable "
            f"(or use a writable copy of it), then run: {fix}"
        ) from None
    return folder


def _checkpoint_problem(path: Path, build: Callable[..., torch.nn.Module] | None) -> str | None:
    """What is wrong with the checkpoint at ``path``, or None when it is usable."""
    if not path.is_file():
        return "missing"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to load means a broken file
        return f"cannot be loaded ({_summary(exc)})"
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        return 'has no "model" state_dict'
    if build is None:
        return None
    try:
        build(num_classes=NUM_CLASSES).load_state_dict(state, strict=True)
    except RuntimeError as exc:
        return f"does not fit architecture {build.__name__} ({_summary(exc)})"
    return None


def _summary(exc: BaseException, limit: int = 300) -> str:
    """A short one-line description of ``exc``."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def _download(url: str, target: Path, fix: str) -> Path:
    """Download ``url`` to ``target`` through a temporary file in the same folder."""
    _LOG.info("Downloading %s to %s", url, target)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out, _DOWNLOAD_CHUNK)
            expected = response.headers.get("Content-Length")
            size = out.tell()
        if expected is not None and size != int(expected):
            raise OSError(f"the download stopped after {size} of {expected} bytes")
        os.replace(partial, target)
    # URLError is an OSError; ValueError: malformed URL; HTTPException: e.g. a cut-short chunked body
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise FetchError(
            f"Could not download {url} to {target} ({_summary(exc)}); retry with: {fix}\n"
            f"  or download the archive by other means and run: {fix} --archive FILE"
        ) from None
    finally:
        Path(partial).unlink(missing_ok=True)
    _LOG.info("Downloaded %d bytes", size)
    return target


def _extract_tar_safely(archive: Path, dest: Path, fix: str, check: Callable[[Path], None] | None = None) -> list[Path]:
    """Extract the regular files of tar ``archive`` under ``dest``; return their paths.

    The whole archive is refused, before anything is written, when a member
    has an absolute path or a ``..`` component, or is a link or special file.
    Files are unpacked into a temporary folder inside ``dest``, handed to
    ``check`` (which raises FetchError to refuse them), and only then moved
    into place, so a damaged or refused archive leaves ``dest`` unchanged.
    """
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _refuse_unsafe_members(archive, members, fix)
            files = [m for m in members if m.isfile()]
            with tempfile.TemporaryDirectory(prefix=".slkd-extract-", dir=dest) as staging:
                for member in files:
                    _extract_file(tar, member, Path(staging, *PurePosixPath(member.name).parts))
                if check is not None:
                    check(Path(staging))
                return [_move_into_place(Path(staging), dest, m.name) for m in files]
    except (OSError, tarfile.TarError) as exc:
        raise FetchError(
            f"Could not extract {archive} ({_summary(exc)}): it is missing or not a complete tar "
            f"archive; fetch the official archive with: {fix}"
        ) from None


def _refuse_unsafe_members(archive: Path, members: list[tarfile.TarInfo], fix: str) -> None:
    """Raise FetchError when any member could write outside the destination."""
    unsafe = [
        member.name
        for member in members
        if PurePosixPath(member.name).is_absolute()
        or ".." in PurePosixPath(member.name).parts
        or not (member.isfile() or member.isdir())
    ]
    if unsafe:
        raise FetchError(
            f"Refusing to extract {archive}: it has unsafe members (absolute paths, '..', links or "
            f"special files); fetch the official archive with: {fix}\n"
            f"  unsafe members: {', '.join(unsafe)}"
        )


def _extract_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    """Copy the content of regular file ``member`` to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tar.extractfile(member) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, _DOWNLOAD_CHUNK)


def _move_into_place(staging: Path, dest: Path, name: str) -> Path:
    """Move extracted member ``name`` from ``staging`` to the same place under ``dest``."""
    relative = Path(*PurePosixPath(name).parts)
    target = dest / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / relative, target)
    return target


# --------------------------------------------------------------------------- CIFAR-100


def cifar100_folder(root: str | os.PathLike) -> Path:
    """The ``cifar-100-python`` folder mdistiller reads: ``<root>/data/cifar-100-python``."""
    return Path(root) / "data" / datasets.CIFAR100.base_folder


def fetch_cifar100(root: str | os.PathLike) -> Path:
    """Download CIFAR-100 with torchvision into ``<root>/data`` and verify it.

    Nothing is downloaded when the files ``train``, ``test`` and ``meta`` all
    have torchvision's md5s.  Otherwise the corrupt ones are removed and the
    release archive is downloaded (torchvision reuses an intact
    ``<root>/data/cifar-100-python.tar.gz``) and extracted.  Returns the
    ``cifar-100-python`` folder.
    """
    root = Path(os.path.abspath(root))
    fix = _command("cifar100", "--mdistiller-root", root)
    data_dir = _make_folder(root / "data", fix)
    problems = _cifar100_file_problems(cifar100_folder(root))
    if problems:
        _remove_corrupt_files(problems, fix)
        _download_cifar100(data_dir, fix)
    else:
        _LOG.info("CIFAR-100 files match their md5s; nothing downloaded.")
    folder = verify_cifar100(root)
    _LOG.info(
        "CIFAR-100 verified at %s: %s",
        folder,
        ", ".join(f"{split} {size} images" for split, size in CIFAR100_SPLIT_SIZES.items()),
    )
    return folder


def _remove_corrupt_files(problems: Mapping[Path, str], fix: str) -> None:
    """Delete the files that ``problems`` reports present but corrupt, so they are fetched again."""
    for path, problem in problems.items():
        if not path.is_file():
            continue
        _LOG.warning("Removing %s: %s", path, problem)
        try:
            path.unlink()
        except OSError as exc:
            raise FetchError(
                f"Cannot remove the corrupt file {path} ({_summary(exc)}): delete it by hand, "
                f"then run: {fix}"
            ) from None


def _download_cifar100(data_dir: Path, fix: str) -> None:
    """Download torchvision's CIFAR-100 archive into ``data_dir`` (md5-checked) and extract it."""
    release = datasets.CIFAR100
    _LOG.info("Downloading %s into %s", release.url, data_dir)
    try:
        download_and_extract_archive(
            release.url, str(data_dir), filename=release.filename, md5=release.tgz_md5
        )
    # URLError is an OSError; RuntimeError: bad md5; HTTPException: e.g. a cut-short chunked body
    except (OSError, RuntimeError, http.client.HTTPException, tarfile.TarError) as exc:
        raise FetchError(
            f"Could not download CIFAR-100 into {data_dir} ({_summary(exc)}); retry with: {fix}\n"
            f"  or extract {release.url} into {data_dir} by other means."
        ) from None


def verify_cifar100(root: str | os.PathLike) -> Path:
    """Check ``<root>/data/cifar-100-python``; return that folder.

    The files ``train``, ``test`` and ``meta`` must have the md5s torchvision's
    ``CIFAR100`` lists; then both splits must load, hold the expected number
    of images (:data:`CIFAR100_SPLIT_SIZES`) and only labels in ``0..99``.
    Raises :class:`FetchError` otherwise.
    """
    folder = cifar100_folder(root)
    if folder.is_dir():
        files = _cifar100_file_problems(folder)
        problems = [f"  {path.name}: {problem}" for path, problem in files.items()]
        problems = problems or [
            f"  {split}: {problem}"
            for split, size in CIFAR100_SPLIT_SIZES.items()
            if (problem := _cifar100_split_problem(folder.parent, split, size))
        ]
    else:
        problems = ["  the folder is missing"]
    if problems:
        raise FetchError(
            f"CIFAR-100 at {folder} is missing or broken; fix: "
            + _command("cifar100", "--mdistiller-root", Path(os.path.abspath(root)))
            + "\n"
            + "\n".join(problems)
        )
    return folder


def _cifar100_file_problems(folder: Path) -> dict[Path, str]:
    """Each file of ``folder`` that is missing or does not have torchvision's md5 -> what is wrong."""
    release = datasets.CIFAR100
    expected = dict(release.train_list + release.test_list)
    expected[release.meta["filename"]] = release.meta["md5"]
    problems = {}
    for name, md5 in expected.items():
        path = folder / name
        if not path.is_file():
            problems[path] = "missing"
        elif (actual := calculate_md5(path)) != md5:
            problems[path] = f"corrupt (md5 {actual}, expected {md5})"
    return problems


def _cifar100_split_problem(data_dir: Path, split: str, size: int) -> str | None:
    """What is wrong with one CIFAR-100 split, or None when it is usable."""
    try:
        dataset = datasets.CIFAR100(str(data_dir), train=split == "train", download=False)
    except Exception as exc:  # any failure to load means broken files
        return f"cannot be loaded ({_summary(exc)})"
    labels = np.asarray(dataset.targets)
    if len(dataset) != size or len(labels) != size:
        return f"has {len(dataset)} images and {len(labels)} labels, expected {size}"
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        return f"has labels in {labels.min()}..{labels.max()}, expected 0..{NUM_CLASSES - 1}"
    if len(dataset.classes) != NUM_CLASSES:
        return f"meta names {len(dataset.classes)} classes, expected {NUM_CLASSES}"
    return None


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    """The ``slkd-fetch`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="slkd-fetch",
        description="Download and verify the CIFAR-100 teacher checkpoints and dataset "
        "inside an mdistiller checkout.",
    )
    parser.add_argument("what", choices=("teachers", "cifar100", "all"), help="what to fetch")
    parser.add_argument(
        "--mdistiller-root",
        metavar="PATH",
        help="mdistiller checkout root (default: $SLKD_MDISTILLER_PATH, else ./mdistiller, else "
        "the checkout of the importable mdistiller; as slkd-train and slkd-bench find it)",
    )
    parser.add_argument("--archive", metavar="FILE", help="use this local cifar_teachers.tar")
    parser.add_argument("--url", default=DEFAULT_URL, help="teacher archive URL (default: %(default)s)")
    parser.add_argument(
        "--force", action="store_true", help="fetch the teachers again even when they are valid"
    )
    parser.add_argument(
        "--no-arch-check",
        action="store_true",
        help="do not load the teachers into the architectures of the checkout's mdistiller "
        "(they are still checked to load as state_dicts)",
    )
    return parser


@contextlib.contextmanager
def _log_to_stdout():
    """Show this module's INFO messages on stdout for the duration of the block."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = _LOG.level
    _LOG.addHandler(handler)
    _LOG.setLevel(logging.INFO)
    try:
        yield
    finally:
        _LOG.removeHandler(handler)
        _LOG.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run ``slkd-fetch``; return 0 on success, 1 (with the message on stderr) on FetchError."""
    parser = _parser()
    args = parser.parse_args(argv)
    teacher_options = args.archive or args.force or args.no_arch_check or args.url != DEFAULT_URL
    if args.what == "cifar100" and teacher_options:
        parser.error("--archive, --url, --force and --no-arch-check apply to the teachers only")
    with _log_to_stdout():
        try:
            root = find_mdistiller_root(args.mdistiller_root)
            print(f"mdistiller checkout: {root}")
            if args.what in ("teachers", "all"):
                fetch_cifar_teachers(
                    root,
                    args.url,
                    archive=args.archive,
                    force=args.force,
                    check_architecture=not args.no_arch_check,
                )
            if args.what in ("cifar100", "all"):
                fetch_cifar100(root)
        except FetchError as exc:
            print(f"slkd-fetch: error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
