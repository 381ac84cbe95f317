#!/usr/bin/env python3
"""Speed benchmark of slkd's SLD against the released code's way of computing it (issue 4).

    python benchmarks/sld_speed.py [--device cpu|cuda] [--quick] [--only loss,step,...]
                                   [--iters N] [--warmup N] [--out FILE.json] [--md FILE.md]

Sub-benchmarks (all by default, pick with ``--only``):

``loss``            the SLD loss, forward and backward, both views, at epoch 1 (teacher swap
                    only) and 200 (pseudo-teacher on), 64x100 and 512x1000: a literal
                    one-temperature-at-a-time implementation written here in the released
                    code's style, all temperatures in one autograd graph, slkd's
                    ``SLDLoss.terms``, its fused Triton kernels (CUDA), the fused loss
                    recorded as a CUDA graph and replayed (CUDA), and optionally
                    ``torch.compile`` of it; value and gradient differences against the
                    literal one, and the torch ops each makes per call, are recorded.
``step``            one training step, resnet32x4 -> resnet8x4, batch 64, device-resident data:
                    slkd's SLD through ``SLKDTrainer.step`` (fp32, bf16, bf16 +
                    channels_last, fp16 with a scaler), the same two-view step with the
                    distillation loss removed, and a released-style step (nn.DataParallel,
                    the loss pulled to the host every step), plus the real released SLD class
                    when ``SLKD_RELEASED_SLD_PATH`` names its checkout. On CUDA also the
                    opt-in modes: ``slkd-fused`` (``SLKD.FUSED_LOSS``) and ``slkd-graphs``
                    (``SLKD.CUDA_GRAPHS`` with the fused loss), with a CE-only step in graphs.
                    All variants are timed interleaved, one step of each per round.
``sync``            (CUDA) 20 slkd steps under ``torch.cuda.set_sync_debug_mode("error")``.
``loader``          an epoch (on CUDA a whole CIFAR-100 epoch) through slkd's two-view loader
                    against the same steps fed from device memory, the loader with fewer
                    workers, and mdistiller's fixed 2 workers; and CIFAR-100's two views per
                    core, PIL against the device views on CPU tensors (benchmarks/views_speed.py).
``epoch-estimate``  a 240-epoch CIFAR-100 run in minutes, from the loader-fed step time, a
                    measured evaluation pass and a measured checkpoint save (eager, and on
                    CUDA also with CUDA graphs and the fused loss).

``step``, ``sync``, ``loader`` and ``epoch-estimate`` need mdistiller (``SLKD_MDISTILLER_PATH``
or an installed one); without it they are recorded as skipped with the reason and ``loss``
still runs. See benchmarks/README.md for what every figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib
import importlib.util
import io
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

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


# =========================================================================== #
# command line
# =========================================================================== #
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        "sld_speed", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--quick", action="store_true", help="tiny counts and models: checks that every path runs, not how fast")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sub-benchmarks out of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per measurement (default: loss 200 on CUDA / 50 on CPU; step 200 / 5)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up iterations per measurement (default: loss 30 / 10; step 30 / 2)")
    parser.add_argument("--loader-iters", type=int, default=None, help="iterations K of the loader runs (default 782, a CIFAR-100 epoch, on CUDA; 5 on CPU)")
    parser.add_argument("--eval-images", type=int, default=None, help="test images in the measured evaluation pass (default 10000 on CUDA, 256 on CPU); scaled to 10000")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 64; 4 with --quick)")
    parser.add_argument("--teacher", default=None, help="default resnet32x4 (resnet14 with --quick)")
    parser.add_argument("--student", default=None, help="default resnet8x4 (resnet8 with --quick)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help=f"slkd step precisions out of {','.join(PRECISIONS)}")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="time torch.compile of slkd's loss (auto: on unless --quick)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for slkd-compiled (e.g. reduce-overhead on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; 1 with --quick on a CPU, where a shared machine otherwise stalls on thread barriers)")
    parser.add_argument("--no-host", action="store_true", help="behave as if mdistiller were missing (tests the skip path)")
    parser.add_argument("--out", default=None, help="write the JSON record here; a folder (existing, or ending in /) gets <name>-<card>-<date>.json")
    parser.add_argument("--md", default=None, help="write the markdown tables here (default: --out with .md)")
    args = parser.parse_args(argv)
    sections = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown or not sections:
        parser.error(f"--only: unknown sub-benchmark(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SECTIONS)}")
    args.sections = [name for name in SECTIONS if name in sections]
    precisions = [name.strip() for name in args.precisions.split(",") if name.strip()]
    bad = [name for name in precisions if name not in PRECISIONS]
    if bad:
        parser.error(f"--precisions: unknown {', '.join(bad)}; choose from {', '.join(PRECISIONS)}")
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")  # every ratio is against fp32
    args.precisions = [name for name in PRECISIONS if name in precisions]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here (use --device cpu)")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for name in ("iters", "warmup", "loader_iters", "eval_images", "batch", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


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
}


def fast_modes(cuda: bool) -> tuple[list, str]:
    """The opt-in modes this run can time (fused loss, CUDA graphs), and why not when none."""
    if not cuda:
        return [], "fused loss and CUDA graphs: CUDA only (Triton's CPU interpreter is for tests, not timing)"
    from slkd.losses.sld_fused import fused_available

    reason = fused_available()
    if reason:
        return [], f"fused loss and CUDA graphs not timed: {reason}"
    return ["fused", "graphs"], ""


# =========================================================================== #
# timing
# =========================================================================== #
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


# =========================================================================== #
# SLD loss implementations (all: two views, unweighted: L(weak) + L(strong))
# =========================================================================== #
def literal_swap(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The released style: a clone, a boolean row mask and advanced-index assignment.

    Boolean indexing makes the number of swapped rows a host value: one host-device
    synchronisation per call on a GPU, which is part of what this reference costs.
    """
    out = logits.clone()
    top = logits.max(dim=1).indices
    rows = top != target
    labels, tops = target[rows], top[rows]
    at_label, at_top = logits[rows, labels], logits[rows, tops]
    out[rows, labels] = at_top
    out[rows, tops] = at_label
    return out


def _literal_kl_term(student, target_logits, temperature):
    """``T^2 * mean_rows KL(softmax(target/T) || softmax(student/T))``, one temperature."""
    log_student = F.log_softmax(student / temperature, dim=1)
    target_probs = F.softmax(target_logits / temperature, dim=1)
    kl = F.kl_div(log_student, target_probs, reduction="none").sum(1).mean()
    return kl * temperature**2


def literal_view_loss(student, teacher, target, epoch, weight=1.0):
    """One view, one temperature at a time, a separate softmax and KL per term (SPEC 2)."""
    swapped_teacher = literal_swap(teacher, target)
    swapped_student = literal_swap(student, target)  # swapped whatever the epoch, as released
    total = 0.0
    for temperature in TEMPERATURES:
        terms = [_literal_kl_term(student, swapped_teacher, temperature)]
        if epoch > GAMMA:
            terms.append(_literal_kl_term(student, swapped_student, temperature))
        total = total + weight * sum(terms)
    return total


def literal_loss(zw, zs, tw, ts, y, epoch):
    return literal_view_loss(zw, tw, y, epoch) + literal_view_loss(zs, ts, y, epoch)


def gather_swap(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The swap as a column permutation and one gather (no host synchronisation)."""
    top = logits.argmax(dim=1, keepdim=True)
    label = target.view(-1, 1)
    columns = torch.arange(logits.shape[1], device=logits.device).expand_as(logits)
    source = torch.where(columns == label, top, torch.where(columns == top, label, columns))
    return logits.gather(1, source)


class StackedLoss:
    """All temperatures in one ``(K, N, C)`` tensor, gradients by plain autograd (the sketch)."""

    def __init__(self, device, dtype=torch.float32):
        temps = torch.tensor(TEMPERATURES, device=device, dtype=dtype)
        self.inverse = temps.reciprocal().view(-1, 1, 1)
        self.squared = (temps * temps).view(-1, 1)

    def view_loss(self, student, teacher, target, epoch):
        log_q = F.log_softmax(student.unsqueeze(0) * self.inverse, dim=-1)
        log_p = F.log_softmax(gather_swap(teacher, target).unsqueeze(0) * self.inverse, dim=-1)
        rows = (self.squared * (log_p.exp() * (log_p - log_q)).sum(-1)).sum(0)
        if epoch > GAMMA:
            log_s = F.log_softmax(gather_swap(student, target).unsqueeze(0) * self.inverse, dim=-1)
            rows = rows + (self.squared * (log_s.exp() * (log_s - log_q)).sum(-1)).sum(0)
        return rows.mean()

    def __call__(self, zw, zs, tw, ts, y, epoch):
        return self.view_loss(zw, tw, y, epoch) + self.view_loss(zs, ts, y, epoch)


class SlkdLoss:
    """What slkd's SLD distiller does: one ``SLDLoss.terms`` call over both views' rows
    (with ``fused``: its Triton kernels)."""

    def __init__(self, device, fused=False):
        from slkd.losses.sld import SLDLoss

        self.criterion = SLDLoss(temperatures=TEMPERATURES, gamma=GAMMA, fused=fused).to(device)

    def __call__(self, zw, zs, tw, ts, y, epoch):
        terms = self.criterion.terms(torch.cat((zw, zs)), torch.cat((tw, ts)), y.repeat(2), epoch)
        return (terms.teacher_swap_loss.sum() + terms.student_swap_loss.sum()) / y.shape[0]


class ReleasedModuleLoss:
    """The released module's own ``swap`` and ``kd_loss``, summed as its ``forward_train`` does."""

    def __init__(self, module):
        self.module = module

    def __call__(self, zw, zs, tw, ts, y, epoch):
        total = 0.0
        for student, teacher in ((zw, tw), (zs, ts)):
            swapped_teacher = self.module.swap(teacher, y)
            swapped_student = self.module.swap(student, y)
            for temperature in TEMPERATURES:
                total = total + self.module.kd_loss(student, swapped_teacher, swapped_student, y, epoch, temperature)
        return total


def loss_inputs(batch, classes, device, dtype=torch.float32):
    """Two views of student and teacher logits and labels; the label leads in some rows
    (about 70% of teacher rows, 30% of student rows), so both swap branches run."""
    generator = torch.Generator().manual_seed(batch * 1009 + classes)
    target = torch.randint(0, classes, (batch,), generator=generator)

    def logits(scale, lead_share):
        values = torch.randn(batch, classes, generator=generator) * scale
        rows = torch.rand(batch, generator=generator) < lead_share
        values[rows, target[rows]] += 4 * scale
        return values.to(device=device, dtype=dtype)

    zw, zs = logits(2.0, 0.3), logits(2.0, 0.3)
    tw, ts = logits(3.0, 0.7), logits(3.0, 0.7)
    return zw, zs, tw, ts, target.to(device)


# =========================================================================== #
# records and tables
# =========================================================================== #
def git_state(folder: Path):
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def card_slug(name: str, device_type: str) -> str:
    if device_type != "cuda":
        return "cpu"
    match = re.search(r"\b(h100|h200|h20|gh200|b200|b100|a100|a10g?|a40|a30|l40s?|l4|v100|t4|rtx\s*\w+)\b", name.lower())
    if match:
        return re.sub(r"\s+", "", match.group(1))
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


ENV_IN_COMMAND = ("SLKD_MDISTILLER_PATH", "SLKD_RELEASED_SLD_PATH")


def command_line() -> str:
    """The command as typed, with the environment variables that change what runs."""
    env = [f"{name}={shlex.quote(os.environ[name])}" for name in ENV_IN_COMMAND if os.environ.get(name)]
    return " ".join(env + [shlex.join(["python3"] + sys.argv)])


def load_average():
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def machine_facts(settings: Settings, host_info) -> dict:
    cuda = settings.cuda
    name = torch.cuda.get_device_name(settings.device) if cuda else cpu_model()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    import slkd

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "device": settings.device.type,
        "device_name": name,
        "card": card_slug(name, settings.device.type),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(settings.device).total_memory / 2**30, 1) if cuda else None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "slkd": slkd.__version__,
        "slkd_git": git_state(Path(__file__).resolve().parent),
        "host": host_info,
        "released_sld_path": os.environ.get("SLKD_RELEASED_SLD_PATH") or None,
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


# =========================================================================== #
# 1. loss
# =========================================================================== #
def bench_loss(settings: Settings, timer: Timer, shared: dict) -> dict:
    device = settings.device
    implementations = {
        "literal": literal_loss,
        "stacked-autograd": StackedLoss(device),
        "slkd": SlkdLoss(device),
    }
    notes = []
    if "fused" in settings.fast_modes:
        implementations["slkd-fused"] = SlkdLoss(device, fused=True)
    else:
        notes.append(f"slkd-fused: {settings.fast_modes_note}")
    released = shared.get("released_module")
    if released is not None:
        implementations["released"] = ReleasedModuleLoss(released)
    elif shared.get("released_note"):
        notes.append(f"released: {shared['released_note']}")
    compiled = None
    if settings.compile:
        slkd_fn = implementations["slkd"]
        compiled = torch.compile(lambda *a: slkd_fn(*a), dynamic=False, mode=None if settings.compile_mode == "default" else settings.compile_mode)
    else:
        notes.append("slkd-compiled: skipped (" + ("--quick" if settings.quick else "--compile off") + ")")
    if "graphs" in settings.fast_modes:
        notes.append("slkd-fused-graph: slkd-fused's forward and backward recorded once as a CUDA graph and replayed (one launch), as the loss runs inside the step under --cuda-graphs")

    results, checks = [], []
    for batch, classes in settings.loss_sizes:
        size = f"{batch}x{classes}"
        inputs = loss_inputs(batch, classes, device)
        leaves = [tensor.clone().requires_grad_(index < 2) for index, tensor in enumerate(inputs[:4])] + [inputs[4]]
        for epoch in (EPOCH_OFF, EPOCH_ON):
            runs = dict(implementations)
            if compiled is not None:
                runs["slkd-compiled"] = compiled
            reference = None
            runners, timings, extra = {}, {}, {}
            for name, impl in runs.items():
                def run_once(impl=impl):
                    loss = impl(*leaves, epoch)
                    grads = torch.autograd.grad(loss, leaves[:2])
                    return loss, grads

                compile_seconds = None
                if name == "slkd-compiled":
                    tick = time.perf_counter()
                    try:
                        run_once()
                        timer.sync()
                        compile_seconds = time.perf_counter() - tick
                        if settings.cuda:
                            timings[name] = timer.measure(run_once, settings.loss_iters, settings.loss_warmup)
                    except Exception as error:  # compile is optional: record why and go on
                        notes.append(f"slkd-compiled: skipped at {size}, epoch {epoch} ({short_error(error)})")
                        compiled = None
                        continue
                loss, grads = run_once()
                if reference is None:
                    reference = (loss.detach().double().item(), [g.detach().double() for g in grads])
                checks.append(correctness_row(size, epoch, name, loss, grads, reference, float64_difference(impl, name, inputs, epoch)))
                runners[name] = run_once
                extra[name] = {"compile_seconds": compile_seconds, "torch_ops": None if name == "slkd-compiled" else count_torch_ops(run_once)}
            if "graphs" in settings.fast_modes:
                # the fused loss as it runs inside a step under --cuda-graphs: recorded once, replayed
                name = "slkd-fused-graph"
                fused = implementations["slkd-fused"]

                def bound_to_own_leaves(fused=fused, epoch=epoch):
                    own = [tensor.detach().clone().requires_grad_(tensor.requires_grad) for tensor in leaves[:4]] + [leaves[4]]

                    def run_once():
                        loss = fused(*own, epoch)
                        return loss, torch.autograd.grad(loss, own[:2])

                    return run_once

                try:
                    runners[name] = graph_replay(bound_to_own_leaves, device)
                except RuntimeError as error:  # an optional row: record why and go on
                    notes.append(f"{name}: not recorded at {size}, epoch {epoch} ({short_error(error)})")
                else:
                    loss, grads = runners[name]()
                    checks.append(correctness_row(size, epoch, name, loss, grads, reference, None))
                    extra[name] = {"compile_seconds": None, "torch_ops": 0}
            if settings.cuda:
                for name, run_once in runners.items():
                    if name not in timings:
                        timings[name] = timer.measure(run_once, settings.loss_iters, settings.loss_warmup)
            else:  # a CPU is often shared: interleave, so that a busy spell hits every implementation alike
                timings = timer.measure_interleaved(runners, settings.loss_iters, settings.loss_warmup)
            for name in runners:
                results.append({"size": size, "batch": batch, "classes": classes, "epoch": epoch, "pseudo_teacher": epoch > GAMMA, "impl": name, **extra[name], **timings[name]})
    literal = {(r["size"], r["epoch"]): r for r in results if r["impl"] == "literal"}
    for row in results:
        row["x_literal"] = row["median_ms"] / literal[(row["size"], row["epoch"])]["median_ms"]
        row["x_literal_min"] = row["min_ms"] / literal[(row["size"], row["epoch"])]["min_ms"]
    max_diff = {}
    for check in checks:
        if check["impl"] != "literal":
            scale = max(1.0, abs(check["literal_value"]))
            max_diff[check["impl"]] = max(max_diff.get(check["impl"], 0.0), check["abs_diff_fp32"] / scale)
    return {
        "status": "ok",
        "what": "SLD loss L(weak) + L(strong), unweighted, forward + backward (autograd.grad w.r.t. both views' student logits)",
        "results": results,
        "correctness": checks,
        "max_rel_diff_vs_literal_fp32": max_diff,
        "notes": notes,
    }


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


def correctness_row(size, epoch, name, loss, grads, reference, abs_diff_fp64) -> dict:
    """One implementation's loss and gradients against ``reference`` (the literal loss's
    value and gradients, float64 copies of its float32 results)."""
    value = loss.detach().double().item()
    return {
        "size": size,
        "epoch": epoch,
        "impl": name,
        "value": value,
        "literal_value": reference[0],
        "abs_diff_fp32": abs(value - reference[0]),
        "grad_max_abs_diff_fp32": max((g.detach().double() - r).abs().max().item() for g, r in zip(grads, reference[1])),
        "abs_diff_fp64": abs_diff_fp64,
    }


def graph_backend(device: torch.device):
    """slkd's CUDA-graph backend (the trainer's, under --cuda-graphs) for ``device``."""
    from slkd.host.graphs import CudaGraphBackend

    return CudaGraphBackend(device)


def graph_replay(make_run, device: torch.device):
    """``make_run()`` (a closure of no arguments that returns tensors) recorded as one CUDA
    graph: returns a closure that replays it and returns the recorded outputs, rewritten in
    place. ``make_run`` is called on the recording stream, so that the closure's tensors (its
    autograd leaves, whose gradients autograd hands over on the stream they were first used
    on) belong to that stream: a leaf first used on the default stream makes the recording
    fail."""
    from slkd.host.graphs import WARMUP_STEPS

    backend = graph_backend(device)
    with backend.stream_context():
        run_once = make_run()
        for _ in range(WARMUP_STEPS):  # lazy set-up (Triton's compilation, the allocator) outside the recording, as the trainer does
            run_once()
        graph, outputs = backend.capture(run_once)

    def replay():
        backend.replay(graph)
        return outputs

    return replay


def count_torch_ops(run_once) -> int:
    """Torch ops (forward and backward) one call makes: at these sizes the loss is bound by
    launches, so this is the machine-independent part of its time. Triton launches of the
    fused loss are not torch ops (two per call)."""
    with _OpCounter() as counter:
        run_once()
    return counter.count


def float64_difference(impl, name, inputs, epoch):
    """|impl - literal| of the loss value in float64 (None where the impl has no float64 path)."""
    if name in ("slkd-compiled",):
        return None
    doubles = [tensor.double() if tensor.is_floating_point() else tensor for tensor in inputs]
    if name == "stacked-autograd":
        impl = StackedLoss(doubles[0].device, torch.float64)
    if name == "slkd-fused":
        impl = SlkdLoss(doubles[0].device, fused=True)
    with torch.no_grad():
        value = impl(*doubles, epoch)
        reference = literal_loss(*doubles, epoch)
    return abs(float(value) - float(reference))


def loss_tables(section) -> str:
    impls = []
    for row in section["results"]:
        if row["impl"] not in impls:
            impls.append(row["impl"])
    by_key = {}
    for row in section["results"]:
        by_key.setdefault((row["size"], row["epoch"]), {})[row["impl"]] = row
    headers = ["size", "epoch", "pseudo-teacher"] + [f"{name} ms" for name in impls] + ["slkd / literal", "slkd / literal (min times)"]
    rows = []
    for (size, epoch), cells in by_key.items():
        slkd = cells.get("slkd")
        rows.append([size, epoch, "on" if epoch > GAMMA else "off"] + [cells[n]["median_ms"] if n in cells else None for n in impls] + [slkd["x_literal"] if slkd else None, slkd["x_literal_min"] if slkd else None])
    text = md_table(headers, rows)
    ops = [[size, epoch] + [cells[n].get("torch_ops") if n in cells else None for n in impls] for (size, epoch), cells in by_key.items()]
    text += "\n\nTorch ops per call, forward and backward (views left out; slkd-fused adds 2 Triton launches; slkd-fused-graph is one graph launch):\n\n"
    text += md_table(["size", "epoch"] + impls, ops)
    diffs = [[c["size"], c["epoch"], c["impl"], c["value"], c["abs_diff_fp32"], c["grad_max_abs_diff_fp32"], c["abs_diff_fp64"]] for c in section["correctness"] if c["impl"] != "literal"]
    text += "\n\nCorrectness against the literal implementation (same inputs):\n\n"
    text += md_table(["size", "epoch", "impl", "loss", "|diff| fp32", "max |grad diff| fp32", "|diff| fp64"], diffs)
    return text


# =========================================================================== #
# host: mdistiller, slkd's trainer, the released SLD
# =========================================================================== #
def import_host_or_reason(no_host: bool):
    """(host, info, None) or (None, None, reason)."""
    if no_host:
        return None, None, "mdistiller treated as missing (--no-host)"
    from slkd.host.registry import HostNotFound, import_host

    try:
        host = import_host()
    except HostNotFound as error:
        first = str(error).splitlines()[0]
        return None, None, f"mdistiller is not importable (set SLKD_MDISTILLER_PATH to a checkout): {first}"
    import slkd

    slkd.register()
    folder = Path(host.package.__file__).resolve().parent
    info = {"path": str(folder.parent), "flavour": host.flavour, "git": git_state(folder)}
    return host, info, None


@contextlib.contextmanager
def placeholder_modules(wanted: dict):
    """Stand-ins for modules (or names in them) that fail to import, restored afterwards.

    The released SLD.py imports ``termios.CEOL`` and ``turtle.st`` and uses neither; turtle
    needs Tk, which GPU machines often lack.
    """
    saved = {}
    for name, attributes in wanted.items():
        try:
            module = importlib.import_module(name)
            if all(hasattr(module, attribute) for attribute in attributes):
                continue
        except Exception:
            pass
        saved[name] = sys.modules.get(name)
        stub = types.ModuleType(name)
        for attribute in attributes:
            setattr(stub, attribute, None)
        sys.modules[name] = stub
    try:
        yield sorted(saved)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def load_released_sld(checkout: str, host):
    """The released ``mdistiller/distillers/SLD.py`` as module ``_slkd_released.SLD``.

    Its ``from ._base import Distiller`` resolves to the host's ``mdistiller.distillers._base``
    (so the class is a host Distiller, teacher kept in eval mode); ``from .loss import ...``
    to the host's ``mdistiller.distillers.loss`` when it has one, else the checkout's own
    ``loss.py`` (upstream mdistiller has none). The installed host is not modified.
    Returns (module, notes).
    """
    folder = Path(checkout) / "mdistiller" / "distillers"
    source = folder / "SLD.py"
    if not source.is_file():
        raise FileNotFoundError(f"SLKD_RELEASED_SLD_PATH={checkout}: {source} does not exist")
    package_name = "_slkd_released"
    package = types.ModuleType(package_name)
    package.__path__ = [str(folder)]
    package.__package__ = package_name
    sys.modules[package_name] = package
    sys.modules[package_name + "._base"] = importlib.import_module("mdistiller.distillers._base")
    notes = ["._base from the host"]
    try:
        sys.modules[package_name + ".loss"] = importlib.import_module("mdistiller.distillers.loss")
        notes.append(".loss from the host")
    except ModuleNotFoundError:
        notes.append(".loss from the released checkout (the host has none)")
    with placeholder_modules({"termios": ["CEOL"], "turtle": ["st"]}) as stubbed:
        spec = importlib.util.spec_from_file_location(package_name + ".SLD", source)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    if stubbed:
        notes.append("placeholder modules for " + ", ".join(stubbed))
    return module, notes


class Bench:
    """Builds slkd trainers, the CE-only and released-style distillers, and their steps."""

    def __init__(self, settings: Settings, host, shared: dict):
        self.settings = settings
        self.host = host
        self.shared = shared
        self.device = settings.device
        self.count = 0
        from slkd.run import train as run_train

        self.run_train = run_train
        self._distiller_classes()

    # -- configs, models
    def cfg(self, precision="fp32", workers=0, mode="eager"):
        amp = {"fp32": "none", "bf16": "bf16", "bf16-cl": "bf16", "fp16": "fp16"}[precision]
        argv = ["--device", self.device.type, "--amp", amp]
        if precision.endswith("-cl"):
            argv.append("--channels-last")
        s = self.settings
        argv += [
            "DISTILLER.TYPE", "SLD",
            "DISTILLER.TEACHER", s.teacher,
            "DISTILLER.STUDENT", s.student,
            "DATASET.TYPE", "cifar100",
            "DATASET.TEST.BATCH_SIZE", str(FULL_RUN["batch"]),
            "SOLVER.TRAINER", "slkd",
            "SOLVER.BATCH_SIZE", str(s.batch),
            "SOLVER.LR", str(LR),
            "SLD.GAMMA", str(GAMMA),
            "SLKD.LOADER.WORKERS", str(workers),
            "LOG.PREFIX", s.workdir,
            *MODE_OPTIONS[mode],
        ]  # fmt: skip
        args = self.run_train.parse_args(argv)
        return self.run_train.build_config(args, self.host.cfg)

    def models(self, cfg):
        from slkd.host import models

        torch.manual_seed(0)
        models.check_names(self.host, cfg)
        student = models.build_student(self.host, cfg, 100)
        teacher = models.build_teacher(self.host, cfg, 100, pretrained=False)
        teacher.requires_grad_(False)
        calibrate_batchnorm(teacher, self.images(cpu=True)[0][0])
        return student, teacher

    def images(self, cpu=False):
        """Synthetic normalised two-view batch and labels (fixed seed)."""
        generator = torch.Generator().manual_seed(1)
        b = self.settings.batch
        weak = torch.randn(b, 3, 32, 32, generator=generator)
        strong = torch.randn(b, 3, 32, 32, generator=generator)
        target = torch.randint(0, 100, (b,), generator=generator)
        index = torch.arange(b)
        if cpu:
            return [weak, strong], target, index
        return [weak.to(self.device), strong.to(self.device)], target.to(self.device), index.to(self.device)

    def _distiller_classes(self):
        from slkd.host.distillers import teacher_logits

        base = self.host.distiller_base

        class CEOnlyTwoView(base):
            """SLD's two-view step without the distillation loss: the student on each view, the
            teacher on both views in SLD's one pass without gradient, SLD's one cross-entropy
            over both views' rows, nothing else."""

            num_views = 2

            def __init__(self, student, teacher, ce_weight):
                super().__init__(student, teacher)
                self.ce_weight = ce_weight

            def forward_train(self, image_weak=None, image_strong=None, target=None, **kwargs):
                views = [image_weak, image_strong]
                student = [self.student(view)[0] for view in views]
                teacher_logits(self.teacher, views)
                loss_ce = self.ce_weight * len(views) * F.cross_entropy(torch.cat(student), target.repeat(len(views)))
                return student[0], {"loss_ce": loss_ce}

        class ReleasedStyleSLD(base):
            """The released SLD's forward written from SPEC sections 2-4: clone-and-index swaps
            of both networks' logits on both views, then per view and per temperature a
            KD_WEIGHT-weighted term with its own softmaxes and KL (the literal loss above)."""

            num_views = 2

            def __init__(self, student, teacher):
                super().__init__(student, teacher)

            def forward_train(self, image_weak=None, image_strong=None, target=None, **kwargs):
                epoch = kwargs["epoch"]
                zw, zs = self.student(image_weak)[0], self.student(image_strong)[0]
                with torch.no_grad():
                    tw, ts = self.teacher(image_weak)[0], self.teacher(image_strong)[0]
                loss_ce = CE_WEIGHT * (F.cross_entropy(zw, target) + F.cross_entropy(zs, target))
                loss_kd = literal_view_loss(zw, tw, target, epoch, KD_WEIGHT) + literal_view_loss(zs, ts, target, epoch, KD_WEIGHT)
                return zw, {"loss_ce": loss_ce, "loss_kd": loss_kd}

        self.CEOnlyTwoView = CEOnlyTwoView
        self.ReleasedStyleSLD = ReleasedStyleSLD

    # -- slkd trainers
    def trainer(self, kind="SLD", precision="fp32", train_set=None, test_set=None, workers=0, mode="eager"):
        from slkd.host import data
        from slkd.host.trainer import SLKDTrainer
        from slkd.utils.distributed import DistContext

        cfg = self.cfg(precision, workers, mode)
        student, teacher = self.models(cfg)
        if kind == "SLD":
            distiller = self.host.distiller_dict["SLD"](student, teacher, cfg)
        elif kind == "CE":
            distiller = self.CEOnlyTwoView(student, teacher, float(cfg.SLD.CE_WEIGHT))
        else:
            raise ValueError(kind)
        if train_set is None:
            train_set = data.SyntheticCIFAR100(self.settings.batch, seed=0)
        if test_set is None:
            test_set = data.SyntheticCIFAR100(self.settings.batch, seed=1, with_index=False)
        self.count += 1
        return SLKDTrainer(
            f"bench-{self.count}-{kind}-{precision}-{mode}",
            distiller.to(self.device),
            _DatasetOnly(train_set),
            _DatasetOnly(test_set),
            cfg,
            context=DistContext(device=self.device),
            argv=["sld_speed"],
            host_package=self.host.package,
        )

    def trainer_step(self, trainer, epoch):
        """A closure running ``trainer.step`` on a device-resident batch prepared as the
        trainer's ``to_device`` prepares a loader batch (channels_last included)."""
        images, target, extras = trainer.to_device(self.images(cpu=True))

        def step():
            trainer.step(images, target, extras, epoch)

        # with CUDA graphs, the eager steps and the recording come before the first replay
        step.steps_before_replay = trainer.step_graphs.warmup_steps + 1 if trainer.step_graphs else 0
        return step

    # -- released-style steps
    def released_step(self, distiller, fixed_epoch=None):
        """One iteration of the MLKD fork's AugTrainer.train_iter: zero_grad, forward through
        nn.DataParallel (CUDA), sum of means, backward, SGD step, top-1/5 accuracy, meters fed
        with ``loss.cpu().detach().numpy()`` and the progress message formatted (which reads
        the accuracy meters: a second host synchronisation). tqdm itself is left out."""
        from mdistiller.engine.utils import AverageMeter, accuracy

        distiller = distiller.to(self.device)
        distiller.train()
        model = nn.DataParallel(distiller, device_ids=[self.device.index or 0]) if self.settings.cuda else distiller
        optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
        (weak, strong), target, _index = self.images()
        meters = {name: AverageMeter() for name in ("losses", "top1", "top5")}

        def step(epoch=fixed_epoch):
            optimizer.zero_grad()
            preds, losses = model(image_weak=weak.float(), image_strong=strong.float(), target=target, epoch=epoch)
            loss = sum([value.mean() for value in losses.values()])
            loss.backward()
            optimizer.step()
            batch = weak.size(0)
            acc1, acc5 = accuracy(preds, target, topk=(1, 5))
            meters["losses"].update(loss.cpu().detach().numpy().mean(), batch)
            meters["top1"].update(acc1[0], batch)
            meters["top5"].update(acc5[0], batch)
            return "Loss:{:.4f}| Top-1:{:.3f}| Top-5:{:.3f}".format(meters["losses"].avg, meters["top1"].avg, meters["top5"].avg)

        return step

    def released_distiller(self, real: bool):
        cfg = self.cfg("fp32")
        student, teacher = self.models(cfg)
        if real:
            released_cfg = self.host.cfg.clone()
            released_cfg.defrost()
            released_cfg.KD.LOSS.CE_WEIGHT = CE_WEIGHT
            released_cfg.KD.LOSS.KD_WEIGHT = KD_WEIGHT
            return self.shared["released_module"].SLD(student, teacher, released_cfg)
        return self.ReleasedStyleSLD(student, teacher)


class _DatasetOnly:
    """What slkd's trainer reads of a host loader: its dataset (as slkd.run.train passes it)."""

    def __init__(self, dataset):
        self.dataset = dataset


def calibrate_batchnorm(model, images):
    """Give a random network BatchNorm statistics of one batch (its eval-mode logits then stay
    in a trained network's range); the timing does not depend on it."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


# =========================================================================== #
# 2. step
# =========================================================================== #
def step_epochs(precision: str) -> tuple:
    """The epochs a step variant is timed at: both pseudo-teacher states in fp32, the
    pseudo-teacher on (the costlier step) otherwise."""
    return (EPOCH_OFF, EPOCH_ON) if precision == "fp32" else (EPOCH_ON,)


def bench_step(settings: Settings, timer: Timer, shared: dict, bench: Bench) -> dict:
    rows, notes = [], []
    s = settings

    # each spec: the row fields shared by its epochs, its epochs, and a builder that makes a
    # trainer (or released-style loop) and returns its step closure at one epoch
    specs = []
    for precision in s.precisions:
        epochs = step_epochs(precision)
        specs.append(({"variant": "slkd", "precision": precision, "path": "SLKDTrainer.step"}, epochs,
                      lambda epoch, precision=precision: bench.trainer_step(bench.trainer("SLD", precision), epoch)))
    specs.append(({"variant": "ce-only", "precision": "fp32", "path": "SLKDTrainer.step, CE-only two-view distiller"}, (EPOCH_ON,),
                  lambda epoch: bench.trainer_step(bench.trainer("CE", "fp32"), epoch)))
    paths = {"fused": "SLKDTrainer.step, SLKD.FUSED_LOSS", "graphs": "SLKDTrainer.step, SLKD.CUDA_GRAPHS + SLKD.FUSED_LOSS"}
    for mode in s.fast_modes:
        for precision in s.precisions:
            if precision == "fp16" and mode != "graphs":
                continue  # the fused loss alone is bound by the host as eager fp16 is; target 3 needs graphs
            epochs = step_epochs(precision)
            specs.append(({"variant": f"slkd-{mode}", "precision": precision, "path": paths[mode]}, epochs,
                          lambda epoch, precision=precision, mode=mode: bench.trainer_step(bench.trainer("SLD", precision, mode=mode), epoch)))
    if "graphs" in s.fast_modes:
        specs.append(({"variant": "ce-only-graphs", "precision": "fp32", "path": "SLKDTrainer.step, CE-only two-view distiller, SLKD.CUDA_GRAPHS"}, (EPOCH_ON,),
                      lambda epoch: bench.trainer_step(bench.trainer("CE", "fp32", mode="graphs"), epoch)))
    if s.fast_modes_note:
        notes.append(s.fast_modes_note)
    wrapper = "nn.DataParallel, " if settings.cuda else ""
    released = [("released-literal", False, "literal loss")]
    if shared.get("released_module") is not None:
        released.append(("released-real", True, "released SLD class"))
    else:
        notes.append("released-real: " + (shared.get("released_note") or "not run"))
    for variant, real, what in released:
        specs.append(({"variant": variant, "precision": "fp32", "path": f"AugTrainer-style loop, {wrapper}{what}"}, (EPOCH_OFF, EPOCH_ON),
                      lambda epoch, real=real: bench.released_step(bench.released_distiller(real=real), epoch)))  # fmt: skip

    # every variant built and warmed up first (on a GPU, its peak memory: what it holds, with
    # one step's activations, above what was held before it was built), then all timed
    # interleaved, one step of each per round, so that a slower spell of the host (a shared
    # machine, a virtual one) falls on every variant alike and the ratios stay fair
    # (one trainer per epoch: a CUDA-graph trainer keeps the graphs of one epoch's key only)
    from slkd.host.graphs import StepCaptureError

    steps, peaks, warmups = {}, {}, {}
    for index, (fields, epochs, build) in enumerate(specs):
        for epoch in epochs:
            held_before = torch.cuda.memory_allocated(settings.device) if settings.cuda else 0
            step = build(epoch)
            if settings.cuda:
                torch.cuda.reset_peak_memory_stats(settings.device)
            warmups[(index, epoch)] = max(s.step_warmup, getattr(step, "steps_before_replay", 0))
            try:
                for _ in range(warmups[(index, epoch)]):  # with CUDA graphs, past the recording
                    step()
            except StepCaptureError as error:  # the row is left out; the others still count
                notes.append(f"{fields['variant']} {fields['precision']} epoch {epoch}: not timed, {short_error(error)}")
                del step
                free_memory()
                continue
            if settings.cuda:
                torch.cuda.synchronize(settings.device)
                peaks[(index, epoch)] = (torch.cuda.max_memory_allocated(settings.device) - held_before) / 2**20
            steps[(index, epoch)] = step
    timings = timer.measure_interleaved(steps, s.step_iters, STEP_REWARM)
    rows.extend(
        {**specs[index][0], "epoch": epoch, **timings[(index, epoch)], "warmup": warmups[(index, epoch)] + STEP_REWARM, "peak_mib": peaks.get((index, epoch)), "torch_ops": count_torch_ops(steps[(index, epoch)])}
        for index, epoch in steps
    )
    del steps
    free_memory()
    for row in rows:
        row["images_per_s"] = s.batch * 1e3 / row["median_ms"]
    if shared.get("released_module") is not None:
        shared["released_check"] = released_cross_check(bench)
    free_memory()

    def ms(variant, precision="fp32", epoch=EPOCH_ON):
        for row in rows:
            if (row["variant"], row["precision"], row["epoch"]) == (variant, precision, epoch):
                return row["median_ms"]
        return None

    ratios = {}
    ce = ms("ce-only")
    for epoch in (EPOCH_OFF, EPOCH_ON):
        ratios[f"slkd_vs_ce_only_epoch{epoch}"] = ms("slkd", epoch=epoch) / ce
        ratios[f"slkd_vs_released_literal_epoch{epoch}"] = ms("slkd", epoch=epoch) / ms("released-literal", epoch=epoch)
        if ms("released-real", epoch=epoch):
            ratios[f"slkd_vs_released_real_epoch{epoch}"] = ms("slkd", epoch=epoch) / ms("released-real", epoch=epoch)
    for precision in s.precisions:
        if precision != "fp32":
            ratios[f"slkd_{precision}_vs_fp32"] = ms("slkd", precision) / ms("slkd", "fp32")
    for mode in s.fast_modes:
        variant = f"slkd-{mode}"
        ce_same_mode = ms("ce-only-graphs") if mode == "graphs" else ce
        for epoch in (EPOCH_OFF, EPOCH_ON):
            ratios[f"{variant}_vs_ce_only_epoch{epoch}"] = ms(variant, epoch=epoch) / ce_same_mode
            released_ms = ms("released-real", epoch=epoch) or ms("released-literal", epoch=epoch)
            ratios[f"{variant}_vs_released_epoch{epoch}"] = ms(variant, epoch=epoch) / released_ms
            ratios[f"{variant}_vs_slkd_eager_epoch{epoch}"] = ms(variant, epoch=epoch) / ms("slkd", epoch=epoch)
        for precision in s.precisions:
            if precision != "fp32" and ms(variant, precision) is not None:
                ratios[f"{variant}_{precision}_vs_fp32"] = ms(variant, precision) / ms(variant, "fp32")
    base = ms("slkd", epoch=EPOCH_ON)
    for row in rows:
        row["x_slkd_fp32"] = row["median_ms"] / base
    if s.quick:
        notes.append(f"--quick: {s.teacher} -> {s.student}, batch {s.batch}; the figures check the code paths, not the speed")
    return {
        "status": "ok",
        "what": f"one training step, {s.teacher} -> {s.student}, batch {s.batch}, 32x32, 100 classes, two views, device-resident synthetic data, random teacher",
        "results": rows,
        "ratios": ratios,
        "released_check": shared.get("released_check"),
        "notes": notes,
    }


def released_cross_check(bench: Bench) -> dict:
    """slkd's SLD and the real released SLD on the same networks and batch, epoch 200: the
    loss terms they return (float32)."""
    cfg = bench.cfg("fp32")
    student, teacher = bench.models(cfg)
    ours = bench.host.distiller_dict["SLD"](student, teacher, cfg).to(bench.device).train()
    theirs = bench.released_distiller(real=True)
    theirs.student.load_state_dict(student.state_dict())
    theirs.teacher.load_state_dict(teacher.state_dict())
    theirs = theirs.to(bench.device).train()
    (weak, strong), target, _ = bench.images()
    out = {}
    with torch.no_grad():
        for epoch in (EPOCH_OFF, EPOCH_ON):
            # BatchNorm in training mode: both see the same batches, so the same logits
            _, a = ours(image_weak=weak, image_strong=strong, target=target, epoch=epoch)
            _, b = theirs(image_weak=weak, image_strong=strong, target=target, epoch=epoch)
            out[f"epoch{epoch}"] = {name: {"slkd": float(a[name]), "released": float(b[name]), "abs_diff": abs(float(a[name]) - float(b[name]))} for name in ("loss_ce", "loss_kd")}
    return out


def step_tables(section) -> str:
    rows = [
        [r["variant"], PRECISION_LABEL.get(r["precision"], r["precision"]), r["epoch"], r["median_ms"], r["wall_mean_ms"], r["images_per_s"], r["peak_mib"], r.get("torch_ops"), r["x_slkd_fp32"], r.get("path")]
        for r in section["results"]
    ]
    text = md_table(["variant", "precision", "epoch", "ms / step (median)", "ms / step (wall mean)", "images / s", "peak MiB", "torch ops / step", "x slkd fp32 (epoch 200)", "what runs"], rows)
    text += "\n\n" + md_table(["ratio", "value"], [[name, value] for name, value in section["ratios"].items()])
    if section.get("released_check"):
        lines = [[epoch, name, v["slkd"], v["released"], v["abs_diff"]] for epoch, terms in section["released_check"].items() for name, v in terms.items()]
        text += "\n\nslkd SLD vs the released SLD class, same networks and batch:\n\n" + md_table(["epoch", "term", "slkd", "released", "|diff|"], lines)
    return text


# =========================================================================== #
# 3. sync
# =========================================================================== #
def run_under_sync_error(step, steps: int) -> dict:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    done = 0
    try:
        for _ in range(steps):
            step()
            done += 1
        outcome = {"passed": True, "error": None, "where": None}
    except RuntimeError as error:
        frames = traceback.extract_tb(error.__traceback__)
        torch_folder = str(Path(torch.__file__).parent)
        ours = [frame for frame in frames if not frame.filename.startswith(torch_folder)] or frames
        where = [f"{Path(frame.filename).name}:{frame.lineno} {frame.name}" for frame in ours[-4:]]
        outcome = {"passed": False, "error": short_error(error, 500), "where": where}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    outcome["steps_done"] = done
    return outcome


def bench_sync(settings: Settings, timer: Timer, shared: dict, bench: Bench) -> dict:
    from slkd.host.graphs import StepCaptureError

    checks = []
    low = "bf16-cl" if "bf16-cl" in settings.precisions else "bf16"
    runs = [(mode, precision) for mode in ("eager", *settings.fast_modes) for precision in ("fp32", low)]
    if "fp16" in settings.precisions:
        # on a GPU the trainer's SGD is fused, and GradScaler hands such an optimizer its inf
        # flag as a tensor instead of reading it on the host: these rows check that the step
        # then runs without a sync, eagerly and as the replays of CUDA graphs
        runs += [(mode, "fp16") for mode in ("eager", *settings.fast_modes)]
    for mode, precision in runs:
        trainer = bench.trainer("SLD", precision, mode=mode)
        outcomes = []
        for epoch in (EPOCH_OFF, EPOCH_ON):
            step = bench.trainer_step(trainer, epoch)
            try:
                # with CUDA graphs the warm-up must get past the recording, which synchronises by
                # design (torch.cuda.graph): the check is on the replays, the steps training repeats
                for _ in range(SYNC_WARMUP + step.steps_before_replay):
                    step()
            except StepCaptureError as error:  # a step that cannot be recorded is one that synchronises
                outcomes.append({"passed": False, "error": f"not recorded: {short_error(error, 500)}", "where": None})
                break
            outcomes.append(run_under_sync_error(step, SYNC_STEPS // 2))
        passed = all(o["passed"] for o in outcomes)
        failed = next((o for o in outcomes if not o["passed"]), None)
        checks.append({
            "variant": "slkd" if mode == "eager" else f"slkd-{mode}",
            "precision": precision,
            "steps": SYNC_STEPS,
            "epochs": [EPOCH_OFF, EPOCH_ON],
            "passed": passed,
            "error": failed["error"] if failed else None,
            "where": failed["where"] if failed else None,
        })  # fmt: skip
        del trainer
        free_memory()
    # positive control: the released-style step synchronises (boolean-mask swap, .cpu())
    distiller = bench.released_distiller(real=False)
    step = bench.released_step(distiller, EPOCH_ON)
    step()
    control = run_under_sync_error(step, 1)
    checks.append({"variant": "released-literal (control: must fail)", "precision": "fp32", "steps": 1, "epochs": [EPOCH_ON], "passed": control["passed"], "error": control["error"], "where": control["where"]})
    del distiller, step
    free_memory()
    return {
        "status": "ok",
        "what": f"torch.cuda.set_sync_debug_mode('error') around {SYNC_STEPS} whole steps (forward, loss, backward, optimizer step) of SLKDTrainer.step, {SYNC_STEPS // 2} at epoch {EPOCH_OFF} and {SYNC_STEPS // 2} at {EPOCH_ON}, after {SYNC_WARMUP} warm-up steps each (with CUDA graphs, also the eager steps and the recording before the first replay)",
        "results": checks,
        "control_detected": not control["passed"],
        "notes": [settings.fast_modes_note] if settings.fast_modes_note else [],
    }


def sync_tables(section) -> str:
    rows = [[c["variant"], PRECISION_LABEL.get(c["precision"], c["precision"]), c["steps"], "pass" if c["passed"] else "FAIL", (c["error"] or "") + (" at " + " < ".join(reversed(c["where"])) if c.get("where") else "")] for c in section["results"]]
    return md_table(["variant", "precision", "steps", "no sync", "error"], rows)


# =========================================================================== #
# 4. loader
# =========================================================================== #
def bench_loader(settings: Settings, timer: Timer, shared: dict, bench: Bench, contrast=True, mode="eager") -> dict:
    from torch.utils.data import DataLoader

    from slkd.host import data
    from slkd.host.views import cifar100_test_transform, two_view_transform

    s = settings
    k = s.loader_iters
    train_set = data.SyntheticCIFAR100(k * s.batch, transform=two_view_transform("cifar100"), seed=0)
    test_set = data.SyntheticCIFAR100(s.eval_images, transform=cifar100_test_transform(), seed=1, with_index=False)
    trainer = bench.trainer("SLD", "fp32", train_set, test_set, workers=-1, mode=mode)
    real_loader = trainer.train_loader
    warm = max(1, min(k, s.step_warmup))

    def epoch_seconds():
        timer.sync()
        tick = time.perf_counter()
        with quiet():
            metrics = trainer.train_epoch(EPOCH_ON)
        seconds = time.perf_counter() - tick
        assert metrics["train_images"] == k * s.batch, metrics
        return seconds

    # the same K steps fed from device memory, through the same epoch loop
    images, target, extras = trainer.to_device(bench.images(cpu=True))
    batch = (images, target, extras["index"])
    trainer.train_loader = [batch] * warm
    with quiet():
        trainer.train_epoch(EPOCH_ON)
    trainer.train_loader = [batch] * k
    synthetic = epoch_seconds()

    def warm_up(loader):  # its persistent workers started, with a few steps
        for index, loaded in enumerate(loader):
            trainer.step(*trainer.to_device(loaded), EPOCH_ON)
            if index + 1 >= warm:
                break

    # slkd's loader: warmed up, then a timed epoch
    trainer.train_loader = real_loader
    warm_up(real_loader)
    fed = epoch_seconds()
    rows = [
        {"feed": "device memory (no loader)", "workers": None, "seconds": synthetic},
        {"feed": "slkd train_loader", "workers": real_loader.num_workers, "pin_memory": real_loader.pin_memory, "persistent_workers": real_loader.persistent_workers, "prefetch_factor": real_loader.prefetch_factor, "seconds": fed},
    ]
    if contrast:
        # slkd's loader with fewer workers: does the default's number of workers pay?
        for workers in sorted({max(1, real_loader.num_workers // 2), min(4, real_loader.num_workers)} - {real_loader.num_workers}, reverse=True):
            trainer.train_loader = DataLoader(
                real_loader.dataset, batch_size=s.batch, sampler=real_loader.sampler, drop_last=real_loader.drop_last, num_workers=workers,
                pin_memory=real_loader.pin_memory, persistent_workers=real_loader.persistent_workers, prefetch_factor=real_loader.prefetch_factor,
            )  # fmt: skip
            warm_up(trainer.train_loader)
            rows.append({"feed": f"slkd train_loader, {workers} workers", "workers": workers, "seconds": epoch_seconds()})
            del trainer.train_loader  # its workers stop
        trainer.train_loader = DataLoader(train_set, batch_size=s.batch, shuffle=True, num_workers=2)
        rows.append({"feed": "mdistiller-style DataLoader (2 workers, no pinning, not persistent)", "workers": 2, "seconds": epoch_seconds()})
    for row in rows:
        row["ms_per_iter"] = row["seconds"] * 1e3 / k
        row["x_device_memory"] = row["seconds"] / synthetic

    result = {
        "status": "ok",
        "what": f"trainer.train_epoch over K={k} iterations of batch {s.batch} (the slkd SLD step at epoch {EPOCH_ON}, fp32, with the epoch loop's bookkeeping and its one read-back at the end), a CIFAR-100-shaped dataset of random pixels with the two-view transform",
        "iterations": k,
        "auto_workers": data.auto_workers(),
        "results": rows,
        "ratio": fed / synthetic,
        "ratio_mdistiller_2_workers": rows[-1]["seconds"] / synthetic if contrast else None,
        "notes": [] if not s.quick else ["--quick: a few iterations of a small model; not a measure of the loader"],
    }
    if contrast:
        result["views"] = views_speed().measure_views(batch=s.batch, batches=1 if s.quick else 4, rounds=1 if s.quick else 5)
        if s.cuda:
            result["views"]["gpu"] = views_speed().measure_views_on_gpu(s.device, batch=s.batch, batches=2 if s.quick else 50)
    result["mode"] = mode
    shared[f"loader_trainer_{mode}"] = trainer
    return result


def loader_tables(section) -> str:
    rows = [[r["feed"], r["workers"], r["seconds"], r["ms_per_iter"], r["x_device_memory"]] for r in section["results"]]
    table = md_table(["feed", "workers", f"seconds for {section['iterations']} iterations", "ms / iteration", "x device memory"], rows)
    if "views" not in section:
        return table
    views = section["views"]
    rates = [["PIL two views (slkd loader, 1 worker)", views["pil_images_per_s_per_core"]], ["device views on CPU tensors", views["device_views_images_per_s_per_core"]], ["device views / PIL", views["views_speedup_per_core"]]]
    table += f"\n\nCIFAR-100 two views, batch {views['batch']}, images / s per core ({views['per_core']}):\n\n" + md_table(["path", "images / s per core"], rates)
    if "gpu" in views:
        gpu = views["gpu"]
        table += "\n\nDevice views on the GPU, ms per batch:\n\n" + md_table(["host draws (loader workers)", "views made on the GPU"], [[gpu["host_draw_ms_per_batch"], gpu["gpu_views_ms_per_batch"]]])
    return table


def views_speed():
    """benchmarks/views_speed.py, imported from its file (this script is not in a package)."""
    spec = importlib.util.spec_from_file_location("views_speed", Path(__file__).with_name("views_speed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# =========================================================================== #
# 5. epoch estimate
# =========================================================================== #
def loader_fed_ms(loader_section: dict) -> float:
    """ms per iteration of the epoch fed by slkd's train loader, from a loader section."""
    return next(row["ms_per_iter"] for row in loader_section["results"] if row["feed"] == "slkd train_loader")


def bench_estimate(settings: Settings, timer: Timer, shared: dict, bench: Bench) -> dict:
    notes = []
    loader = shared.get("loader_result")
    if loader is None or loader.get("status") != "ok":
        notes.append("the loader sub-benchmark was not selected: its slkd-loader measurement ran here")
        loader = bench_loader(settings, timer, shared, bench, contrast=False)
    trainer = shared.pop("loader_trainer_eager")
    iteration_ms = loader_fed_ms(loader)
    fast = {}
    if "graphs" in settings.fast_modes:  # the fastest exact mode: CUDA graphs with the fused loss
        fast["graphs"] = loader_fed_ms(bench_loader(settings, timer, shared, bench, contrast=False, mode="graphs"))
        shared.pop("loader_trainer_graphs")
    if settings.fast_modes_note:
        notes.append(settings.fast_modes_note)

    with quiet():
        trainer.evaluate()  # starts the evaluation workers (persistent, as in a run)
    timer.sync()
    tick = time.perf_counter()
    with quiet():
        trainer.evaluate()
    eval_seconds = time.perf_counter() - tick
    eval_full = eval_seconds * FULL_RUN["test_images"] / settings.eval_images

    trainer.save_checkpoints(1, False)
    tick = time.perf_counter()
    trainer.save_checkpoints(2, False)
    save_seconds = time.perf_counter() - tick

    iterations = FULL_RUN["iterations_per_epoch"]
    epoch_seconds = iterations * iteration_ms / 1e3 + eval_full + save_seconds
    minutes = FULL_RUN["epochs"] * epoch_seconds / 60
    by_mode = {
        mode: {"iteration_ms": ms, "minutes": FULL_RUN["epochs"] * (iterations * ms / 1e3 + eval_full + save_seconds) / 60}
        for mode, ms in fast.items()
    }
    if settings.quick or settings.batch != FULL_RUN["batch"]:
        notes.append(f"batch {settings.batch} and {settings.teacher} -> {settings.student}: not a full-run configuration")
    notes.append(f"the iteration time is measured at epoch {EPOCH_ON} (pseudo-teacher on) for all epochs: an upper bound")
    return {
        "status": "ok",
        "what": f"{FULL_RUN['epochs']} x ({iterations} loader-fed iterations + evaluation of {FULL_RUN['test_images']} test images at batch {FULL_RUN['batch']} + checkpoint save)",
        "iteration_ms": iteration_ms,
        "eval_images_measured": settings.eval_images,
        "eval_seconds_measured": eval_seconds,
        "eval_seconds_per_10000": eval_full,
        "checkpoint_seconds": save_seconds,
        "epoch_seconds": epoch_seconds,
        "train_minutes": FULL_RUN["epochs"] * iterations * iteration_ms / 1e3 / 60,
        "minutes": minutes,
        "modes": by_mode,
        "notes": notes,
    }


def estimate_tables(section) -> str:
    rows = [
        ["loader-fed iteration (ms)", section["iteration_ms"]],
        [f"evaluation of 10000 images (s; measured on {section['eval_images_measured']})", section["eval_seconds_per_10000"]],
        ["checkpoint save (s)", section["checkpoint_seconds"]],
        ["epoch (s)", section["epoch_seconds"]],
        ["240 epochs, training steps only (min)", section["train_minutes"]],
        ["240 epochs, all (min)", section["minutes"]],
    ]
    for mode, values in section.get("modes", {}).items():
        rows += [[f"{mode}: loader-fed iteration (ms)", values["iteration_ms"]], [f"{mode}: 240 epochs, all (min)", values["minutes"]]]
    return md_table(["quantity", "value"], rows)


# =========================================================================== #
# targets
# =========================================================================== #
def targets(record: dict, settings: Settings) -> list:
    out = []
    sections = record["sections"]
    cuda = settings.cuda

    def add(name, measured, threshold, compare, applies, why_not, unit="", note=""):
        if measured is None:
            verdict, note = "n.a.", note or "not measured in this run"
        elif not applies:
            verdict, note = "n.a.", why_not
        elif settings.quick and compare != "pass":
            verdict, note = "n.a.", "--quick: timings not meaningful"
        elif compare == "<=":
            verdict = "PASS" if measured <= threshold else "FAIL"
        elif compare == "<":
            verdict = "PASS" if measured < threshold else "FAIL"
        elif compare == ">=":
            verdict = "PASS" if measured >= threshold else "FAIL"
        else:  # pass/fail check
            verdict = "PASS" if measured else "FAIL"
        out.append({"target": name, "measured": measured, "unit": unit, "threshold": threshold, "compare": compare, "verdict": verdict, "note": note})

    loss = sections.get("loss", {})
    if loss.get("status") == "ok":
        rows = {(r["size"], r["epoch"], r["impl"]): r for r in loss["results"]}
        for impl in ("slkd", "slkd-fused", "slkd-fused-graph"):
            for size, limit in (("64x100", 0.6), ("512x1000", 1.0)):
                row = rows.get((size, EPOCH_ON, impl))
                if impl == "slkd" or row:
                    add(f"1. SLD loss {size}, both views, pseudo-teacher on, fwd+bwd (GPU), {impl}", row and row["median_ms"], limit, "<=", cuda, "GPU target; this run is on CPU", "ms")
        for size in ("64x100", "512x1000"):
            row = rows.get((size, EPOCH_ON, "slkd"))
            add(f"1. SLD loss {size}, pseudo-teacher on: slkd / literal (CPU)", row and row["x_literal"], 0.4, "<=", not cuda, "CPU target; this run is on a GPU", "x")
    else:
        for name in ("1. SLD loss (GPU ms, CPU ratio)",):
            add(name, None, None, "<=", True, "", note=loss.get("reason", "not run"))

    step = sections.get("step", {})
    if step.get("status") == "ok":
        ratios = step["ratios"]
        ce = max(ratios[f"slkd_vs_ce_only_epoch{e}"] for e in (EPOCH_OFF, EPOCH_ON))
        add("2. step: slkd / CE-only two-view step (worse of epochs 1, 200)", ce, 1.05, "<=", True, "", "x")
        which = "real" if f"slkd_vs_released_real_epoch{EPOCH_ON}" in ratios else "literal"
        rel = max(ratios[f"slkd_vs_released_{which}_epoch{e}"] for e in (EPOCH_OFF, EPOCH_ON))
        add(f"2. step: slkd / released step ({which}; worse of epochs 1, 200)", rel, 0.75, "<=", True, "", "x", "released-style literal stand-in (set SLKD_RELEASED_SLD_PATH for the real class)" if which == "literal" else "")
        for precision in ("bf16-cl", "bf16", "fp16"):
            key = f"slkd_{precision}_vs_fp32"
            if key in ratios:
                add(f"3. step: slkd {PRECISION_LABEL[precision]} / fp32", ratios[key], 1.0, "<", cuda, "GPU target (CPUs without bf16/fp16 matrix units are slower)", "x")
        for mode in settings.fast_modes:
            variant = f"slkd-{mode}"
            ce_mode = max(ratios[f"{variant}_vs_ce_only_epoch{e}"] for e in (EPOCH_OFF, EPOCH_ON))
            add(f"2. step ({variant}): / CE-only step{' in graphs' if mode == 'graphs' else ''} (worse of epochs 1, 200)", ce_mode, 1.05, "<=", True, "", "x")
            rel_mode = max(ratios[f"{variant}_vs_released_epoch{e}"] for e in (EPOCH_OFF, EPOCH_ON))
            add(f"2. step ({variant}): / released step (worse of epochs 1, 200)", rel_mode, 0.75, "<=", True, "", "x")
            for precision in ("bf16-cl", "bf16", "fp16"):
                key = f"{variant}_{precision}_vs_fp32"
                if key in ratios:
                    add(f"3. step ({variant}): {PRECISION_LABEL[precision]} / fp32", ratios[key], 1.0, "<", cuda, "GPU target", "x")
    else:
        add("2./3. step ratios", None, None, "<=", True, "", note=step.get("reason", "not run"))

    sync = sections.get("sync", {})
    if sync.get("status") == "ok":
        for check in sync["results"]:
            if check["variant"].startswith("slkd"):
                control = "" if sync.get("control_detected") else "warning: the released-style control step did not trip the check"
                add(f"4. no host-device sync in a step ({check['variant']}, {PRECISION_LABEL[check['precision']]})", check["passed"], True, "pass", True, "", "", control)
    else:
        add("4. no host-device sync in a step", None, None, "pass", True, "", note=sync.get("reason", "not run"))

    loader = sections.get("loader", {})
    if loader.get("status") == "ok":
        cores = record["facts"].get("cpu_affinity") or record["facts"].get("cpu_count")
        add("5. loader-fed epoch / device-memory epoch (16-core GPU machine)", loader["ratio"], 1.15, "<=", cuda, "GPU-machine target; this run is on CPU", "x", "" if (cores or 0) >= 16 else f"this machine has {cores} cores")
        views = loader.get("views")
        add("7. CIFAR-100 views: device views on CPU tensors / PIL, images per second per core (issue 17)", views and views["views_speedup_per_core"], 3.0, ">=", not cuda, "CPU target; this run is on a GPU", "x")
    else:
        add("5. loader-fed epoch / device-memory epoch", None, None, "<=", True, "", note=loader.get("reason", "not run"))

    estimate = sections.get("epoch-estimate", {})
    if estimate.get("status") == "ok":
        add("6. 240-epoch CIFAR-100 run, estimated (H100/H200), eager", estimate["minutes"], 35.0, "<=", cuda, "GPU target; this run is on CPU", "min")
        for mode, values in estimate.get("modes", {}).items():
            add(f"6. 240-epoch CIFAR-100 run, estimated (H100/H200), {mode} + fused loss", values["minutes"], 35.0, "<=", cuda, "GPU target; this run is on CPU", "min")
    else:
        add("6. 240-epoch CIFAR-100 run, estimated", None, None, "<=", True, "", note=estimate.get("reason", "not run"))
    return out


def target_table(rows) -> str:
    lines = []
    for row in rows:
        threshold = "no sync" if row["compare"] == "pass" else (f"{row['compare']} {fmt(row['threshold'])} {row['unit']}".strip() if row["threshold"] is not None else "-")
        measured = ("pass" if row["measured"] else "fail") if isinstance(row["measured"], bool) else (f"{fmt(row['measured'])} {row['unit']}".strip() if row["measured"] is not None else "-")
        lines.append([row["target"], measured, threshold, row["verdict"], row["note"]])
    return md_table(["target", "measured", "target value", "verdict", "note"], lines)


# =========================================================================== #
# main
# =========================================================================== #
TABLES = {"loss": loss_tables, "step": step_tables, "sync": sync_tables, "loader": loader_tables, "epoch-estimate": estimate_tables}


def render(record: dict) -> str:
    facts = record["facts"]
    parts = [
        f"# SLD speed benchmark: {facts['device_name']} ({facts['card']})",
        "",
        f"Command: `{facts['command']}`",
        "",
        *([] if record.get("complete", True) else ["**Partial record: written after each section; the run had not finished.**", ""]),
        md_table(["fact", "value"], [
            ["date (UTC)", facts["date"]],
            ["device", facts["device_name"]],
            ["torch / CUDA / cuDNN", f"{facts['torch']} / {facts['cuda']} / {facts['cudnn']}"],
            ["CPUs (usable) / torch threads", f"{facts['cpu_count']} ({facts['cpu_affinity']}) / {facts['torch_threads']}"],
            ["CPU", facts["cpu_model"]],
            ["load average (1, 5, 15 min) at start / end", f"{facts['load_average_start']} / {facts.get('load_average_end')}"],
            ["slkd", f"{facts['slkd']} {(facts['slkd_git'] or {}).get('commit', '')}{' (dirty)' if (facts['slkd_git'] or {}).get('dirty') else ''}"],
            ["mdistiller", (facts["host"] or {}).get("path", "not importable")],
        ]),  # fmt: skip
    ]
    for name in SECTIONS:
        section = record["sections"].get(name)
        if section is None:
            continue
        parts += ["", f"## {name}", ""]
        if section["status"] != "ok":
            parts.append(f"{section['status']}: {section.get('reason', '')}")
            continue
        parts.append(section.get("what", ""))
        parts += ["", TABLES[name](section)]
        for note in section.get("notes", []):
            parts.append(f"\n- {note}")
    parts += ["", "## Targets (issue 4)", "", target_table(record["targets"]), ""]
    return "\n".join(parts)


def result_path(args, record) -> Path:
    """``--out`` itself, or ``<folder>/<name>-<card>-<date>.json`` when it names a folder."""
    out = Path(args.out)
    if not (args.out.endswith(("/", os.sep)) or out.is_dir()):
        return out
    name = "sld_speed"
    if args.quick:
        name += "-quick"
    if args.sections != list(SECTIONS):
        name += "-" + "+".join(args.sections)
    date = record["facts"]["date"][:10]
    return out / f"{name}-{record['facts']['card']}-{date}.json"


def record_paths(args, record) -> tuple:
    """(JSON path or None, markdown path or None) of ``--out`` and ``--md``."""
    out = result_path(args, record) if args.out else None
    md = Path(args.md) if args.md else (out.with_suffix(".md") if out else None)
    return out, md


def write_record(record: dict, settings: Settings, args, done: bool) -> str:
    """Judge the targets, write the JSON and markdown where asked, return the markdown.
    ``complete`` is False while sections are still to run."""
    from slkd.utils.records import write_text_atomically

    record["complete"] = done
    record["facts"]["load_average_end"] = load_average()
    record["targets"] = targets(record, settings)
    text = render(record)
    out, md = record_paths(args, record)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(out, json.dumps(record, indent=2, default=str) + "\n")
    if md:
        write_text_atomically(md, text)
    return text


def run_section(name: str, settings: Settings, timer: Timer, shared: dict, bench, no_host_reason) -> dict:
    """One sub-benchmark's section: its results, or why it was skipped, or its error."""
    if name == "sync" and not settings.cuda:
        return {"status": "skipped", "reason": "CUDA only: torch's sync debug mode checks host-device synchronisation"}
    if name != "loss" and bench is None:
        return {"status": "skipped", "reason": no_host_reason}
    try:
        if name == "loss":
            return bench_loss(settings, timer, shared)
        if name == "step":
            return bench_step(settings, timer, shared, bench)
        if name == "sync":
            return bench_sync(settings, timer, shared, bench)
        if name == "loader":
            shared["loader_result"] = bench_loader(settings, timer, shared, bench)
            return shared["loader_result"]
        return bench_estimate(settings, timer, shared, bench)
    except Exception as error:
        section = {"status": "error", "reason": short_error(error, 1000), "traceback": traceback.format_exc()}
        print(section["traceback"], file=sys.stderr, flush=True)
        return section


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick and args.device == "cpu":
        torch.set_num_threads(1)  # quick checks code paths; one thread cannot stall on a busy CI box
    settings = Settings(args)
    timer = Timer(settings.device)
    host, host_info, no_host_reason = import_host_or_reason(args.no_host)
    shared: dict = {}
    released_path = os.environ.get("SLKD_RELEASED_SLD_PATH")
    if released_path and host is not None:
        try:
            shared["released_module"], load_notes = load_released_sld(released_path, host)
            shared["released_note"] = "; ".join(load_notes)
        except Exception as error:
            shared["released_note"] = f"could not load the released SLD from {released_path}: {short_error(error)}"
    elif released_path:
        shared["released_note"] = "SLKD_RELEASED_SLD_PATH is set but mdistiller is not importable"
    else:
        shared["released_note"] = "SLKD_RELEASED_SLD_PATH not set"

    record = {"schema": SCHEMA, "facts": machine_facts(settings, host_info), "settings": settings.as_dict(), "sections": {}}
    record["facts"]["released_sld_import"] = shared.get("released_note")
    if host is not None:
        settings.workdir = tempfile.mkdtemp(prefix="sld_speed-")
        bench = Bench(settings, host, shared)
        from slkd.host.runtime import configure_backends

        configure_backends(bench.cfg("fp32"), settings.device.type)
    else:
        bench = None
    print(f"[sld_speed] {record['facts']['device_name']}, torch {torch.__version__}, sections: {', '.join(args.sections)}", flush=True)

    failed = False
    try:
        for name in args.sections:
            started = time.perf_counter()
            section = run_section(name, settings, timer, shared, bench, no_host_reason)
            failed |= section["status"] == "error"
            section["seconds"] = time.perf_counter() - started
            record["sections"][name] = section
            print(f"[sld_speed] {name}: {section['status']} in {section['seconds']:.1f} s", flush=True)
            free_memory()
            write_record(record, settings, args, done=False)  # a run cut short keeps its finished sections
        for key in [key for key in shared if key.startswith("loader_trainer")]:
            shared.pop(key)
        free_memory()

        text = write_record(record, settings, args, done=True)
        print()
        print(text)
        for path in filter(None, record_paths(args, record)):
            print(f"[sld_speed] wrote {path}")
    finally:  # also when Ctrl-C or a time limit stops the run
        if settings.workdir:
            import shutil

            shutil.rmtree(settings.workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    import signal

    # a time limit's SIGTERM (timeout(1)) unwinds like Ctrl-C: temporary run folders are removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
