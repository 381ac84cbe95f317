"""The command line of ``benchmarks/sld_speed.py`` and the loop over its sections."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback

import torch

from . import estimate, loader, loss, step, sync
from .common import PRECISIONS, SCHEMA, SECTIONS, Settings, Timer, free_memory, short_error
from .host import Bench, import_host_or_reason, load_released_sld
from .record import machine_facts, record_paths, write_record


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        "sld_speed", description=sys.modules[__package__].__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
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


def run_section(name: str, settings: Settings, timer: Timer, shared: dict, bench, no_host_reason) -> dict:
    """One sub-benchmark's section: its results, or why it was skipped, or its error."""
    if name == "sync" and not settings.cuda:
        return {"status": "skipped", "reason": "CUDA only: torch's sync debug mode checks host-device synchronisation"}
    if name != "loss" and bench is None:
        return {"status": "skipped", "reason": no_host_reason}
    try:
        if name == "loss":
            return loss.bench_loss(settings, timer, shared)
        if name == "step":
            return step.bench_step(settings, timer, shared, bench)
        if name == "sync":
            return sync.bench_sync(settings, timer, shared, bench)
        if name == "loader":
            shared["loader_result"] = loader.bench_loader(settings, timer, shared, bench)
            return shared["loader_result"]
        return estimate.bench_estimate(settings, timer, shared, bench)
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

