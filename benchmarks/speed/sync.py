"""``sync`` (CUDA): whole training steps under ``torch.cuda.set_sync_debug_mode("error")``,
every precision and opt-in mode, with a released-style step as the control that must fail."""

from __future__ import annotations

import traceback
from pathlib import Path

import torch

from .common import EPOCH_OFF, EPOCH_ON, PRECISION_LABEL, SYNC_STEPS, SYNC_WARMUP, Settings, Timer, free_memory, md_table, short_error
from .host import Bench
from .step import FAST_PRECISION, exact_modes


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
    modes = ("eager", *exact_modes(settings))
    runs = [(mode, precision) for mode in modes for precision in ("fp32", low)]
    if "fp16" in settings.precisions:
        # on a GPU the trainer's SGD is fused, and GradScaler hands such an optimizer its inf
        # flag as a tensor instead of reading it on the host: these rows check that the step
        # then runs without a sync, eagerly and as the replays of CUDA graphs
        runs += [(mode, "fp16") for mode in modes]
    if "fast" in settings.fast_modes:  # --fast as it trains: the views made on the device in each step
        runs.append(("fast", FAST_PRECISION))
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
