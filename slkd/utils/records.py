"""What a run leaves behind, so that its numbers can be explained and reproduced.

A run folder holds::

    config.yaml      the merged config
    command.txt      the command line
    environment.json python, torch, CUDA, GPUs, slkd version, host codebase and its commit
    metrics.jsonl    one JSON object per epoch (loss terms, accuracies, lr, seconds, memory)
    summary.json     best and last test top-1, epochs done, seed, views, data (real or
                     synthetic N, smoke), device; rewritten after each epoch
    latest, best, student_latest, student_best   checkpoints (mdistiller's names)
    train.events/    tensorboard logs
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

import slkd


def environment(host_package=None) -> dict:
    """Facts about the software and hardware this run uses."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpus": os.cpu_count(),
        "slkd": slkd.__version__,
        "slkd_commit": git_commit(Path(slkd.__file__).parent),
    }
    if host_package is not None:
        folder = Path(host_package.__file__).parent
        info["host"] = {
            "package": host_package.__name__,
            "path": str(folder.parent),
            "commit": git_commit(folder),
        }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return info


def git_commit(folder: Path) -> str | None:
    """The commit checked out in the git work tree holding ``folder`` (None when not in one)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunRecord:
    """Writes the files of a run folder (only on rank 0 under torchrun)."""

    def __init__(self, folder: str | os.PathLike, enabled: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled
        if enabled:
            self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.folder / "metrics.jsonl"

    def start(self, cfg, argv, env: dict) -> None:
        """Write config, command and environment; a fresh start drops older metrics."""
        if not self.enabled:
            return
        self.metrics_path.unlink(missing_ok=True)
        write_text_atomically(self.folder / "config.yaml", cfg.dump())
        write_text_atomically(self.folder / "command.txt", " ".join(argv) + "\n")
        write_text_atomically(self.folder / "environment.json", json.dumps(env, indent=2, default=str) + "\n")

    def truncate_after(self, epoch: int) -> None:
        """Drop metric lines of epochs after ``epoch`` (left by a run killed before its
        checkpoint), and a line cut short by a kill while it was written: the whole lines
        are kept, and what was dropped is printed."""
        if not self.enabled or not self.metrics_path.exists():
            return
        lines, cut = read_metric_lines(self.metrics_path)
        if cut:
            print(f"[slkd] {self.metrics_path}: dropped {len(cut)} cut line(s) (a run killed while writing "
                  f"them), kept the {len(lines)} whole one(s): {cut[0][:60]!r}", flush=True)
        kept = [line for line in lines if line["epoch"] <= epoch]
        write_text_atomically(self.metrics_path, "".join(json.dumps(line) + "\n" for line in kept))

    def log_epoch(self, metrics: dict) -> None:
        """Append one epoch's metrics."""
        if self.enabled:
            with open(self.metrics_path, "a") as stream:
                stream.write(json.dumps(metrics) + "\n")

    def read_metrics(self) -> list[dict]:
        """The whole metric lines (a line cut by a kill is left out)."""
        return read_metric_lines(self.metrics_path)[0]

    def write_summary(self, summary: dict) -> None:
        if self.enabled:
            write_text_atomically(self.folder / "summary.json", json.dumps(summary, indent=2) + "\n")


def read_metric_lines(path: Path) -> tuple[list[dict], list[str]]:
    """(the lines of a ``metrics.jsonl`` that parse as JSON objects with an epoch, the text of
    those that do not, e.g. one cut by a kill while it was written)."""
    if not path.is_file():
        return [], []
    lines, unreadable = [], []
    for text in path.read_text(errors="replace").splitlines():
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError:
            line = None
        if isinstance(line, dict) and isinstance(line.get("epoch"), int):
            lines.append(line)
        else:
            unreadable.append(text)
    return lines, unreadable


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it: a reader (or a run
    killed meanwhile) sees the old file or the new one, never half of one."""
    temporary = path.with_name("." + path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)

