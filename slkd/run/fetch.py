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
               [--archive FILE] [--url URL] [--force]

(also ``python -m slkd.run.fetch``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
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

__all__ = [
    "CIFAR100_SPLIT_SIZES",
    "CIFAR_TEACHERS",
    "DEFAULT_URL",
    "FetchError",
    "ROOT_ENV_VAR",
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

ROOT_ENV_VAR = "SLKD_MDISTILLER_ROOT"
"""Environment variable naming the mdistiller checkout root."""

CLONE_HINT = "git clone https://github.com/megvii-research/mdistiller && pip install -e ./mdistiller"

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


class FetchError(RuntimeError):
    """A checkout, download, checkpoint or dataset is missing or broken.

    The message names the offending path and the command that fixes it.
    """


def _command(*args: object) -> str:
    """The shell command ``slkd-fetch ARGS``, quoted for copy and paste."""
    return " ".join(["slkd-fetch", *(shlex.quote(str(arg)) for arg in args)])


# --------------------------------------------------------------------------- checkout


def find_mdistiller_root(explicit: str | os.PathLike | None = None) -> Path:
    """Return the root of the mdistiller checkout.

    Looked up in order: ``explicit``, the environment variable
    ``SLKD_MDISTILLER_ROOT``, then the folder above the importable
    ``mdistiller`` package (found without importing it).  An explicit or
    environment root must contain an ``mdistiller`` folder.
    """
    if explicit is not None:
        return _checked_root(Path(explicit), "--mdistiller-root")
    if os.environ.get(ROOT_ENV_VAR):
        return _checked_root(Path(os.environ[ROOT_ENV_VAR]), f"${ROOT_ENV_VAR}")
    spec = importlib.util.find_spec("mdistiller")
    if spec is None or not spec.submodule_search_locations:
        raise FetchError(
            "mdistiller is not importable and no checkout root was given. mdistiller is not "
            f"on PyPI; clone and install it with:\n  {CLONE_HINT}\n"
            "then run slkd-fetch again, or point it at an existing checkout with:\n  "
            + _command("all", "--mdistiller-root", "/path/to/mdistiller")
            + f"\n(or set {ROOT_ENV_VAR}=/path/to/mdistiller)."
        )
    # Resolved: mdistiller's paths climb out of the package with "..", which the
    # operating system applies after following symlinks.
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent


def _checked_root(root: Path, source: str) -> Path:
    """``root`` resolved, after checking it holds an ``mdistiller`` package folder."""
    root = root.resolve()
    if not (root / "mdistiller").is_dir():
        raise FetchError(
            f"{root} (from {source}) is not an mdistiller checkout: it has no mdistiller/ "
            f"folder. Clone and install mdistiller with:\n  {CLONE_HINT}\n"
            "and pass the folder that contains mdistiller/, e.g.:\n  "
            + _command("all", "--mdistiller-root", "/path/to/mdistiller")
        )
    return root


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
    checkpoints are verified with :func:`verify_cifar_teachers`.

    Returns the checkpoint paths; raises :class:`FetchError` naming every
    missing or broken checkpoint.
    """
    root = Path(os.path.abspath(root))
    if not force:
        with contextlib.suppress(FetchError):
            paths = verify_cifar_teachers(root, check_architecture=check_architecture)
            _LOG.info(
                "All %d teacher checkpoints are already present and valid under %s; "
                "nothing fetched (use --force to fetch again).",
                len(paths),
                root / CKPT_DIR,
            )
            return paths
    fix = _command("teachers", "--mdistiller-root", root)
    ckpt_dir = root / CKPT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if archive is None:
        archive = _download(url, ckpt_dir / TEACHERS_ARCHIVE_NAME, fix)
    extracted = _extract_tar_safely(Path(archive), ckpt_dir, fix)
    _LOG.info("Extracted %d files from %s into %s", len(extracted), archive, ckpt_dir)
    try:
        paths = verify_cifar_teachers(root, check_architecture=check_architecture)
    except FetchError as exc:
        raise FetchError(f"{archive} did not provide valid teacher checkpoints. {exc}") from None
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
    ``check_architecture`` and mdistiller is importable, load with
    ``strict=True`` into its ``cifar_model_dict`` architecture built with
    ``num_classes=100``.  Raises :class:`FetchError` listing every failure.
    """
    names = list(CIFAR_TEACHERS if names is None else names)
    builders = _teacher_builders() if check_architecture else {}
    paths, problems = [], []
    for name in names:
        path = teacher_checkpoint_path(root, name)
        problem = _checkpoint_problem(path, builders.get(name))
        if problem:
            problems.append(f"  {name}: {path}: {problem}")
        paths.append(path)
    if problems:
        raise FetchError(
            f"{len(problems)} of {len(names)} CIFAR-100 teacher checkpoints are missing or "
            "broken:\n"
            + "\n".join(problems)
            + "\nFix with:\n  "
            + _command("teachers", "--mdistiller-root", Path(os.path.abspath(root)))
        )
    return paths


def _teacher_builders() -> dict[str, Callable[..., torch.nn.Module]]:
    """Teacher name -> model constructor from mdistiller, or {} when mdistiller is not importable."""
    try:
        cifar = importlib.import_module("mdistiller.models.cifar")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "mdistiller":
            raise
        _LOG.warning("mdistiller is not importable: checkpoints not checked against their architectures.")
        return {}
    return {name: cifar.cifar_model_dict[name][0] for name in CIFAR_TEACHERS}


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
    except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: malformed URL
        raise FetchError(
            f"Could not download {url} to {target} ({_summary(exc)}). Retry with:\n  {fix}\n"
            f"or download the archive by other means and run:\n  {fix} --archive FILE"
        ) from None
    finally:
        Path(partial).unlink(missing_ok=True)
    _LOG.info("Downloaded %d bytes", size)
    return target


def _extract_tar_safely(archive: Path, dest: Path, fix: str) -> list[Path]:
    """Extract the regular files of tar ``archive`` under ``dest``; return their paths.

    The whole archive is refused, before anything is written, when a member
    has an absolute path or a ``..`` component, or is a link or special file.
    Files are unpacked into a temporary folder inside ``dest`` and then moved
    into place, so a damaged archive leaves ``dest`` unchanged.
    """
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _refuse_unsafe_members(archive, members, fix)
            files = [m for m in members if m.isfile()]
            with tempfile.TemporaryDirectory(prefix=".slkd-extract-", dir=dest) as staging:
                for member in files:
                    _extract_file(tar, member, Path(staging, *PurePosixPath(member.name).parts))
                return [_move_into_place(Path(staging), dest, m.name) for m in files]
    except (OSError, tarfile.TarError) as exc:
        raise FetchError(
            f"Could not extract {archive} ({_summary(exc)}): it is missing or not a complete tar "
            f"archive. Fetch the official archive with:\n  {fix}"
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
            f"Refusing to extract {archive}: unsafe members (absolute paths, '..', links or "
            f"special files): {', '.join(unsafe)}. Fetch the official archive with:\n  {fix}"
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

    torchvision checks the md5 of every file and skips the download when they
    are already correct.  Returns the ``cifar-100-python`` folder.
    """
    data_dir = Path(root) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        datasets.CIFAR100(str(data_dir), train=False, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; RuntimeError: bad md5
        raise FetchError(
            f"Could not download CIFAR-100 into {data_dir} ({_summary(exc)}). Retry with:\n  "
            + _command("cifar100", "--mdistiller-root", Path(os.path.abspath(root)))
            + f"\nor extract {datasets.CIFAR100.url} into {data_dir} by other means."
        ) from None
    folder = verify_cifar100(root)
    _LOG.info(
        "CIFAR-100 verified at %s: %s",
        folder,
        ", ".join(f"{split} {size} images" for split, size in CIFAR100_SPLIT_SIZES.items()),
    )
    return folder


def verify_cifar100(root: str | os.PathLike) -> Path:
    """Check ``<root>/data/cifar-100-python``; return that folder.

    Both splits must pass torchvision's md5 checks and load, hold the
    expected number of images (:data:`CIFAR100_SPLIT_SIZES`) and only labels
    in ``0..99``.  Raises :class:`FetchError` otherwise.
    """
    folder = cifar100_folder(root)
    if folder.is_dir():
        problems = [
            f"  {split}: {problem}"
            for split, size in CIFAR100_SPLIT_SIZES.items()
            if (problem := _cifar100_split_problem(folder.parent, split, size))
        ]
    else:
        problems = ["  the folder is missing"]
    if problems:
        raise FetchError(
            f"CIFAR-100 at {folder} is missing or broken:\n"
            + "\n".join(problems)
            + "\nFix with:\n  "
            + _command("cifar100", "--mdistiller-root", Path(os.path.abspath(root)))
        )
    return folder


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
        help=f"mdistiller checkout root (default: ${ROOT_ENV_VAR}, else the importable mdistiller)",
    )
    parser.add_argument("--archive", metavar="FILE", help="use this local cifar_teachers.tar")
    parser.add_argument("--url", default=DEFAULT_URL, help="teacher archive URL (default: %(default)s)")
    parser.add_argument(
        "--force", action="store_true", help="fetch the teachers again even when they are valid"
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
    if args.what == "cifar100" and (args.archive or args.force or args.url != DEFAULT_URL):
        parser.error("--archive, --url and --force apply to the teachers only")
    with _log_to_stdout():
        try:
            root = find_mdistiller_root(args.mdistiller_root)
            print(f"mdistiller checkout: {root}")
            if args.what in ("teachers", "all"):
                fetch_cifar_teachers(root, args.url, archive=args.archive, force=args.force)
            if args.what in ("cifar100", "all"):
                fetch_cifar100(root)
        except FetchError as exc:
            print(f"slkd-fetch: error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
