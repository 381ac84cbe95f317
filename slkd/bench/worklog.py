"""Training logs in mdistiller's ``worklog.txt`` format, read by ``slkd-bench report --import``.

mdistiller's trainer (and the trainers of the MLKD fork, the released SLD code and the
logit-standardization fork, which keep its format) appends one block per epoch, and one
line when training ends::

    -------------------------
    epoch: 1
    lr: 0.05                   (two decimals; six in the logit-standardization fork)
    train_acc: 12.34
    train_loss: 3.21
    test_acc: 20.10
    test_acc_top5: 45.00
    test_loss: 3.00
    -------------------------
    best_acc\t77.12            (no line break after it)

A resumed run appends more blocks, and may repeat the epochs logged after its last
checkpoint: the last block of an epoch wins. A run resumed after it ended appends its next
block right after the ``best_acc`` number, on the same line. The run folder is named after
``EXPERIMENT.NAME`` or else ``EXPERIMENT.TAG`` (``dkd,res32x4,res8x4``): the method and
pair are read from that name when it has this form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from slkd.errors import BenchError

FILE_NAME = "worklog.txt"
SEPARATOR = re.compile(r"-{5,}")
BEST = re.compile(r"best_acc\s+(-?[0-9.]+)")
ENTRY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(\S+)\s*$")


@dataclass
class Worklog:
    """One imported log: ``epochs`` holds one dict per epoch (``epoch``, ``lr``, ``test_acc``,
    ... as floats, ``epoch`` an int), sorted by epoch; ``best_acc`` is the ``best_acc`` line's
    number (None when training did not reach it)."""

    path: Path
    epochs: list = field(default_factory=list)
    best_acc: float | None = None

    @property
    def finished(self) -> bool:
        """Whether the trainer wrote its final ``best_acc`` line."""
        return self.best_acc is not None

    @property
    def best(self) -> float:
        """Best test top-1: the ``best_acc`` line, else the highest epoch's ``test_acc``."""
        return self.best_acc if self.best_acc is not None else max(line["test_acc"] for line in self.epochs)

    @property
    def last(self) -> float:
        return self.epochs[-1]["test_acc"]

    def name_parts(self) -> tuple[str, str, str] | None:
        """``(method, teacher, student)`` from a run folder named ``method,teacher,student``
        (mdistiller's ``EXPERIMENT.TAG``), else None."""
        parts = [part.strip() for part in self.path.parent.name.split(",")]
        return (parts[0], parts[1], parts[2]) if len(parts) >= 3 and all(parts[:3]) else None


def resolve(path: str | Path) -> Path:
    """``path`` itself, or the ``worklog.txt`` in the folder ``path``; one-line error otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise BenchError(f"--import {path}: no such file; give a worklog.txt or the run folder holding it")
    return path


def parse(text: str, path: Path) -> Worklog:
    """A :class:`Worklog` from a worklog's text."""
    log = Worklog(Path(path))
    by_epoch: dict[int, dict] = {}
    block: dict = {}
    for number, line in enumerate(text.splitlines(), 1):
        best = BEST.search(line)
        if best:
            log.best_acc = float(best.group(1))
            line = line[best.end():]
        if not line.strip():
            continue
        if SEPARATOR.fullmatch(line.strip()):
            _close(block, by_epoch, path)
            block = {}
            continue
        entry = ENTRY.match(line)
        if entry is None:
            raise BenchError(f"{path}:{number}: {line.strip()[:60]!r} is not a 'key: value' line of mdistiller's worklog.txt")
        key, value = entry.groups()
        try:
            block[key] = int(value) if key == "epoch" else float(value)
        except ValueError:
            raise BenchError(f"{path}:{number}: {key} is {value!r}, not a number") from None
    _close(block, by_epoch, path)
    log.epochs = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    if not log.epochs:
        raise BenchError(f"{path}: no epoch block (epoch:, test_acc: ... between dashed lines): not an mdistiller worklog.txt")
    return log


def _close(block: dict, by_epoch: dict, path) -> None:
    """File a finished block under its epoch (a later block of the same epoch replaces it)."""
    if not block:
        return
    missing = [key for key in ("epoch", "test_acc") if key not in block]
    if missing:
        raise BenchError(f"{path}: an epoch block without {' and '.join(missing)}: not an mdistiller worklog.txt")
    by_epoch[block["epoch"]] = block


def read(path: str | Path) -> Worklog:
    """The worklog at ``path`` (a file, or a run folder holding ``worklog.txt``)."""
    path = resolve(path)
    return parse(path.read_text(errors="replace"), path)
