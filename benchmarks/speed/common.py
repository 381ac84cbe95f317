"""What every section shares: the run's constants and settings, the timer, the markdown
table helpers, and the torch-op counter."""

from __future__ import annotations

import contextlib
import gc
import io
import math
import statistics
import subprocess
import time
from pathlib import Path

import torch

from slkd.losses.sld import SLD_DEFAULTS


SCHEMA = "slkd-sld-speed/1"
SECTIONS = ("loss", "step", "sync", "loader", "epoch-estimate")
TEMPERATURES, GAMMA, CE_WEIGHT, KD_WEIGHT = (SLD_DEFAULTS[key] for key in ("TEMPERATURES", "GAMMA", "CE_WEIGHT", "KD_WEIGHT"))
EPOCH_OFF = 1  # teacher swap only
EPOCH_ON = GAMMA + 50  # pseudo-teacher (student swap) on
LR = 0.025
LOSS_SIZES = ((64, 100), (512, 1000))
QUICK_LOSS_SIZES = ((16, 10), (64, 100))
PRECISIONS = ("fp32", "bf16", "bf16-cl", "fp16")
PRECISION_LABEL = {
    "fp32": "fp32",
    "bf16": "bf16 autocast",
    "bf16-cl": "bf16 autocast + channels_last",
    "fp16": "fp16 autocast + grad scaler",
}
FULL_RUN = {"epochs": 240, "iterations_per_epoch": 782, "batch": 64, "test_images": 10000}
SYNC_STEPS = 20
STEP_REWARM = 2  # steps of each variant, after all are built, before the interleaved timing
SYNC_WARMUP = 3  # eager steps before the check: allocator, cuDNN autotuning, Triton compilation


class Settings:
    """Iteration counts, sizes and models for this run (device- and --quick-dependent)."""

    def __init__(self, args):
        cuda = args.device == "cuda"
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.cuda = cuda
        self.quick = args.quick
        if args.quick:
            loss_iters, loss_warmup, step_iters, step_warmup = 3, 1, 1, 0
            loader_iters, eval_images = 2, 16
        elif cuda:
            loss_iters, loss_warmup, step_iters, step_warmup = 200, 30, 200, 30
            # a whole CIFAR-100 epoch: the start of an epoch's prefetching counts as in a run
            loader_iters, eval_images = FULL_RUN["iterations_per_epoch"], FULL_RUN["test_images"]
        else:
            loss_iters, loss_warmup, step_iters, step_warmup = 50, 10, 5, 2
            loader_iters, eval_images = 5, 256
        self.loss_iters = args.iters or loss_iters
        self.loss_warmup = loss_warmup if args.warmup is None else args.warmup
        self.step_iters = args.iters or step_iters
        self.step_warmup = step_warmup if args.warmup is None else args.warmup
        self.loader_iters = args.loader_iters or loader_iters
        self.eval_images = args.eval_images or eval_images
        self.batch = args.batch or (4 if args.quick else FULL_RUN["batch"])
        self.teacher = args.teacher or ("resnet14" if args.quick else "resnet32x4")
        self.student = args.student or ("resnet8" if args.quick else "resnet8x4")
        self.loss_sizes = QUICK_LOSS_SIZES if args.quick else LOSS_SIZES
        self.precisions = args.precisions
        self.compile = args.compile == "on" or (args.compile == "auto" and not args.quick)
        self.compile_mode = args.compile_mode
        self.fast_modes, self.fast_modes_note = fast_modes(cuda)
        self.workdir = None  # a temporary folder for run folders and checkpoints

    def as_dict(self):
        return {
            "device": str(self.device),
            "quick": self.quick,
            "loss": {"iters": self.loss_iters, "warmup": self.loss_warmup, "sizes": [f"{b}x{c}" for b, c in self.loss_sizes], "epochs": [EPOCH_OFF, EPOCH_ON], "compile": self.compile, "compile_mode": self.compile_mode},
            "step": {"iters": self.step_iters, "warmup": self.step_warmup, "batch": self.batch, "teacher": self.teacher, "student": self.student, "precisions": list(self.precisions), "image_size": 32, "classes": 100},
            "loader": {"iters": self.loader_iters},
            "epoch_estimate": {"eval_images": self.eval_images, **FULL_RUN},
            "temperatures": list(TEMPERATURES),
            "gamma": GAMMA,
            "fast_modes": list(self.fast_modes),
        }


MODE_OPTIONS = {
    "eager": [],
    "fused": ["SLKD.FUSED_LOSS", "True"],
    "graphs": ["SLKD.FUSED_LOSS", "True", "SLKD.CUDA_GRAPHS", "True"],
    "views": ["SLKD.DEVICE_VIEWS", "True"],
    "fast": [],  # slkd-train's --fast (Bench.cfg)
}


def fast_modes(cuda: bool) -> tuple[list, str]:
    """The opt-in modes this run can time (fused loss, CUDA graphs, slkd-train's ``--fast``),
    and why not when none."""
    if not cuda:
        return [], "fused loss, CUDA graphs and --fast: CUDA only (Triton's CPU interpreter is for tests, not timing)"
    from slkd.losses.sld_fused import fused_available

    reason = fused_available()
    if reason:
        return [], f"fused loss, CUDA graphs and --fast not timed: {reason}"
    return ["fused", "graphs", "fast"], ""


class Timer:
    """Median per-iteration time.

    :meth:`measure` times one function: between CUDA events on a GPU (and the mean wall-clock
    time per iteration over the whole timed loop, one synchronisation at its end: the
    throughput a loop would see), with ``perf_counter`` on a CPU. :meth:`measure_interleaved`
    times several, one call of each per round, each call with ``perf_counter`` between two
    synchronisations (so a GPU step's time includes the tail of its kernels).
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def measure_interleaved(self, fns: dict, iters: int, warmup: int) -> dict:
        """Like :meth:`measure` for several functions, one call of each per round (the order
        rotating), so that load from other processes falls on all of them alike."""
        names = list(fns)
        for name in names:
            for _ in range(warmup):
                fns[name]()
        self.sync()
        times = {name: [] for name in names}
        for round_index in range(iters):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                self.sync()
                tick = time.perf_counter()
                fns[name]()
                self.sync()
                times[name].append((time.perf_counter() - tick) * 1e3)
        return {
            name: {
                "median_ms": statistics.median(values),
                "min_ms": min(values),
                "max_ms": max(values),
                "wall_mean_ms": statistics.fmean(values),
                "iters": iters,
                "warmup": warmup,
                "timer": "perf_counter, interleaved",
            }
            for name, values in times.items()
        }

    def measure(self, fn, iters: int, warmup: int) -> dict:
        for _ in range(warmup):
            fn()
        self.sync()
        if self.cuda:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            began = time.perf_counter()
            for start, end in zip(starts, ends):
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize()
            wall = time.perf_counter() - began
            times = [start.elapsed_time(end) for start, end in zip(starts, ends)]
            method = "cuda-events"
        else:
            times = []
            began = time.perf_counter()
            for _ in range(iters):
                tick = time.perf_counter()
                fn()
                times.append((time.perf_counter() - tick) * 1e3)
            wall = time.perf_counter() - began
            method = "perf_counter"
        return {
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "max_ms": max(times),
            "wall_mean_ms": wall * 1e3 / iters,
            "iters": iters,
            "warmup": warmup,
            "timer": method,
        }


def fmt(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 10 ** -(digits):
            return f"{value:.2e}"
        if abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(cell) for cell in row) + " |")
    return "\n".join(lines)


def short_error(error: BaseException, limit=300) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first[:limit]


@contextlib.contextmanager
def quiet():
    """Silence the trainer's progress lines while a timed epoch runs."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield sink


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the torch ops that reach a kernel (views and allocations left out)."""

    FREE = {"view", "_unsafe_view", "as_strided", "detach", "expand", "unsqueeze", "squeeze", "t", "alias", "select", "slice", "unbind", "split", "split_with_sizes", "chunk", "permute", "transpose", "empty", "empty_strided", "empty_like", "lift_fresh", "_local_scalar_dense"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in self.FREE:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_torch_ops(run_once) -> int:
    """Torch ops (forward and backward) one call makes: at these sizes the loss is bound by
    launches, so this is the machine-independent part of its time. Triton launches of the
    fused loss are not torch ops (two per call)."""
    with _OpCounter() as counter:
        run_once()
    return counter.count


def git_state(folder: Path):
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
