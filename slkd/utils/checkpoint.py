"""Checkpoints that survive a crash: atomic writes, integrity check, fallback to the last good one.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then
renamed over the old one, so a reader sees the old file or the new one, never half of one.
``latest`` keeps its predecessor as ``latest.prev``; :func:`load_latest` falls back to it
when ``latest`` is truncated or unreadable, and says so.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from slkd.errors import CheckpointError

RESUME_CHECKPOINTS = ("latest", "latest.prev")  # what save_latest(state, folder) leaves behind



def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def save_latest(obj, folder: str | os.PathLike, name: str = "latest") -> Path:
    """Save ``folder/name`` atomically, keeping the previous one as ``name.prev``."""
    path = Path(folder) / name
    if path.exists():
        os.replace(path, path.with_name(name + ".prev"))
    save_atomic(obj, path)
    return path


def has_resume_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds ``latest`` or ``latest.prev``: a run ``--resume`` continues."""
    return any((Path(folder) / name).is_file() for name in RESUME_CHECKPOINTS)


def drop_resume_checkpoints(folder: str | os.PathLike) -> None:
    """Delete ``latest`` and ``latest.prev`` from ``folder``, where they exist."""
    for name in RESUME_CHECKPOINTS:
        with contextlib.suppress(FileNotFoundError):
            os.remove(Path(folder) / name)


def load(path: str | os.PathLike):
    """Load a checkpoint on the CPU; :class:`CheckpointError` names a broken file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as error:  # truncated zip, bad pickle: the file is unusable either way
        raise CheckpointError(f"checkpoint {path} is damaged ({type(error).__name__}: {error})") from None


def load_latest(folder: str | os.PathLike, name: str = "latest"):
    """The newest readable of ``name`` and ``name.prev`` in ``folder``, and its path.

    Raises :class:`CheckpointError` when neither exists or loads.
    """
    folder = Path(folder)
    problems = []
    for candidate in (folder / name, folder / (name + ".prev")):
        if not candidate.exists():
            problems.append(f"{candidate} does not exist")
            continue
        try:
            state = load(candidate)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        if problems:
            warnings.warn(f"resuming from {candidate}: " + "; ".join(problems), stacklevel=2)
        return state, candidate
    raise CheckpointError(
        f"--resume found no usable checkpoint in {folder}: " + "; ".join(problems)
        + ". Start without --resume, or point LOG.PREFIX / EXPERIMENT at the run to resume."
    )


def rng_state() -> dict:
    """The random states of python, numpy, torch and every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where devices match)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
