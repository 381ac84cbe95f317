"""``epoch-estimate``: a 240-epoch CIFAR-100 run in minutes, from the loader-fed step time,
a measured evaluation pass and a measured checkpoint save: eager fp32, and on CUDA also with
CUDA graphs and the fused loss, and with slkd-train's ``--fast`` (its device views feeding
the steps, its evaluation in bf16 and channels-last)."""

from __future__ import annotations

import time

from . import loader
from .common import EPOCH_ON, FULL_RUN, Settings, Timer, md_table, quiet
from .host import Bench

MODE_LABEL = {"graphs": "CUDA graphs + fused loss", "fast": "--fast (with its device views)"}


def loader_fed_ms(loader_section: dict) -> float:
    """ms per iteration of the epoch fed by the trainer's own loader, from a loader section."""
    return loader_section["results"][1]["ms_per_iter"]


def evaluation_and_save(trainer, timer: Timer, settings: Settings) -> dict:
    """The trainer's evaluation pass (scaled to 10000 test images) and one checkpoint save, in seconds."""
    with quiet():
        trainer.evaluate()  # starts the evaluation workers (persistent, as in a run)
    timer.sync()
    tick = time.perf_counter()
    with quiet():
        trainer.evaluate()
    eval_seconds = time.perf_counter() - tick
    trainer.save_checkpoints(1, False)
    tick = time.perf_counter()
    trainer.save_checkpoints(2, False)
    return {
        "eval_seconds_measured": eval_seconds,
        "eval_seconds_per_10000": eval_seconds * FULL_RUN["test_images"] / settings.eval_images,
        "checkpoint_seconds": time.perf_counter() - tick,
    }


def run_minutes(iteration_ms: float, extra: dict) -> float:
    """240 epochs of 782 iterations, each epoch with its evaluation and checkpoint save."""
    epoch_seconds = FULL_RUN["iterations_per_epoch"] * iteration_ms / 1e3 + extra["eval_seconds_per_10000"] + extra["checkpoint_seconds"]
    return FULL_RUN["epochs"] * epoch_seconds / 60


def bench_estimate(settings: Settings, timer: Timer, shared: dict, bench: Bench) -> dict:
    notes = []
    loader_section = shared.get("loader_result")
    if loader_section is None or loader_section.get("status") != "ok":
        notes.append("the loader sub-benchmark was not selected: its slkd-loader measurement ran here")
        loader_section = loader.bench_loader(settings, timer, shared, bench, contrast=False)
    eager = evaluation_and_save(shared.pop("loader_trainer_eager"), timer, settings)
    iteration_ms = loader_fed_ms(loader_section)
    modes = {}
    for mode in ("graphs", "fast"):
        if mode not in settings.fast_modes:
            continue
        fed = loader.bench_loader(settings, timer, shared, bench, contrast=False, mode=mode)
        trainer = shared.pop(f"loader_trainer_{mode}")
        # graphs: the eager run's fp32 evaluation; --fast evaluates in bf16 and channels-last
        extra = evaluation_and_save(trainer, timer, settings) if mode == "fast" else eager
        del trainer
        modes[mode] = {
            "label": MODE_LABEL[mode],
            "iteration_ms": loader_fed_ms(fed),
            "device_memory_iteration_ms": fed["results"][0]["ms_per_iter"],
            "x_device_memory": fed["ratio"],
            "loader_workers": fed["results"][1]["workers"],
            **extra,
            "minutes": run_minutes(loader_fed_ms(fed), extra),
        }
    if settings.fast_modes_note:
        notes.append(settings.fast_modes_note)
    if settings.quick or settings.batch != FULL_RUN["batch"]:
        notes.append(f"batch {settings.batch} and {settings.teacher} -> {settings.student}: not a full-run configuration")
    notes.append(f"the iteration time is measured at epoch {EPOCH_ON} (pseudo-teacher on) for all epochs: an upper bound")
    iterations = FULL_RUN["iterations_per_epoch"]
    return {
        "status": "ok",
        "what": f"{FULL_RUN['epochs']} x ({iterations} loader-fed iterations + evaluation of {FULL_RUN['test_images']} test images at batch {FULL_RUN['batch']} + checkpoint save)",
        "iteration_ms": iteration_ms,
        "eval_images_measured": settings.eval_images,
        **eager,
        "epoch_seconds": iterations * iteration_ms / 1e3 + eager["eval_seconds_per_10000"] + eager["checkpoint_seconds"],
        "train_minutes": FULL_RUN["epochs"] * iterations * iteration_ms / 1e3 / 60,
        "minutes": run_minutes(iteration_ms, eager),
        "modes": modes,
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
        label = values.get("label", mode)
        rows += [
            [f"{label}: loader-fed iteration (ms; {values.get('loader_workers')} workers)", values["iteration_ms"]],
            [f"{label}: the same fed from device memory (ms)", values.get("device_memory_iteration_ms")],
            [f"{label}: loader-fed / device memory", values.get("x_device_memory")],
            [f"{label}: evaluation of 10000 images (s)", values.get("eval_seconds_per_10000")],
            [f"{label}: 240 epochs, all (min)", values["minutes"]],
        ]
    return md_table(["quantity", "value"], rows)
