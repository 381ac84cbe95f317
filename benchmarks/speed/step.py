"""``step``: one training step of every variant (slkd in each precision and opt-in mode, the
CE-only step, the released-style steps), built first and timed interleaved."""

from __future__ import annotations

import torch

from .common import EPOCH_OFF, EPOCH_ON, PRECISION_LABEL, STEP_REWARM, Settings, Timer, count_torch_ops, free_memory, md_table, short_error
from .host import Bench


def step_epochs(precision: str) -> tuple:
    """The epochs a step variant is timed at: both pseudo-teacher states in fp32, the
    pseudo-teacher on (the costlier step) otherwise."""
    return (EPOCH_OFF, EPOCH_ON) if precision == "fp32" else (EPOCH_ON,)


FAST_PRECISION = "bf16-cl"  # what --fast sets
FAST_PATH = "SLKDTrainer.step, --fast (CUDA graphs, fused loss, bf16, channels-last), the views made on the device in each step"


def exact_modes(settings: Settings) -> list:
    """The opt-in modes timed in every precision: the fused loss and CUDA graphs (``fast``
    has its own precision and rows)."""
    return [mode for mode in settings.fast_modes if mode != "fast"]


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
    for mode in exact_modes(s):
        for precision in s.precisions:
            if precision == "fp16" and mode != "graphs":
                continue  # the fused loss alone is bound by the host as eager fp16 is; target 3 needs graphs
            epochs = step_epochs(precision)
            specs.append(({"variant": f"slkd-{mode}", "precision": precision, "path": paths[mode]}, epochs,
                          lambda epoch, precision=precision, mode=mode: bench.trainer_step(bench.trainer("SLD", precision, mode=mode), epoch)))
    if "graphs" in s.fast_modes:
        specs.append(({"variant": "ce-only-graphs", "precision": "fp32", "path": "SLKDTrainer.step, CE-only two-view distiller, SLKD.CUDA_GRAPHS"}, (EPOCH_ON,),
                      lambda epoch: bench.trainer_step(bench.trainer("CE", "fp32", mode="graphs"), epoch)))
    if "fast" in s.fast_modes:
        specs.append(({"variant": "slkd-fast", "precision": FAST_PRECISION, "path": FAST_PATH}, (EPOCH_OFF, EPOCH_ON),
                      lambda epoch: bench.trainer_step(bench.trainer("SLD", mode="fast"), epoch)))  # fmt: skip
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
    for mode in exact_modes(s):
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
    for epoch in (EPOCH_OFF, EPOCH_ON):
        if ms("slkd-fast", FAST_PRECISION, epoch) is not None:
            released_ms = ms("released-real", epoch=epoch) or ms("released-literal", epoch=epoch)
            ratios[f"slkd-fast_vs_released_epoch{epoch}"] = ms("slkd-fast", FAST_PRECISION, epoch) / released_ms
            ratios[f"slkd-fast_vs_slkd_eager_epoch{epoch}"] = ms("slkd-fast", FAST_PRECISION, epoch) / ms("slkd", epoch=epoch)
    if ms("slkd-fast", FAST_PRECISION) is not None and ms("slkd-graphs", FAST_PRECISION) is not None:
        # what making the views on the device adds to the step in graphs, bf16 + channels_last
        ratios["slkd-fast_vs_slkd-graphs_bf16-cl"] = ms("slkd-fast", FAST_PRECISION) / ms("slkd-graphs", FAST_PRECISION)
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
