"""The JSON record and its markdown: the machine's facts, the targets' verdicts, the tables
of every section, written after each section."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import torch

from .common import EPOCH_OFF, EPOCH_ON, PRECISION_LABEL, SECTIONS, Settings, fmt, git_state, md_table
from .estimate import estimate_tables
from .loader import loader_tables
from .loss import loss_tables
from .step import exact_modes, step_tables
from .sync import sync_tables


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
        for mode in exact_modes(settings):
            variant = f"slkd-{mode}"
            ce_mode = max(ratios[f"{variant}_vs_ce_only_epoch{e}"] for e in (EPOCH_OFF, EPOCH_ON))
            add(f"2. step ({variant}): / CE-only step{' in graphs' if mode == 'graphs' else ''} (worse of epochs 1, 200)", ce_mode, 1.05, "<=", True, "", "x")
            rel_mode = max(ratios[f"{variant}_vs_released_epoch{e}"] for e in (EPOCH_OFF, EPOCH_ON))
            add(f"2. step ({variant}): / released step (worse of epochs 1, 200)", rel_mode, 0.75, "<=", True, "", "x")
            for precision in ("bf16-cl", "bf16", "fp16"):
                key = f"{variant}_{precision}_vs_fp32"
                if key in ratios:
                    add(f"3. step ({variant}): {PRECISION_LABEL[precision]} / fp32", ratios[key], 1.0, "<", cuda, "GPU target", "x")
        if f"slkd-fast_vs_released_epoch{EPOCH_ON}" in ratios:
            rel_fast = max(ratios[f"slkd-fast_vs_released_epoch{e}"] for e in (EPOCH_OFF, EPOCH_ON) if f"slkd-fast_vs_released_epoch{e}" in ratios)
            add("2. step (slkd-fast, its views made in the step): / released step (worse of epochs 1, 200)", rel_fast, 0.75, "<=", True, "", "x")
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
        add("7. CIFAR-100 views: device views on CPU tensors / PIL, images per second per core", views and views["views_speedup_per_core"], 3.0, ">=", not cuda, "CPU target; this run is on a GPU", "x")
    else:
        add("5. loader-fed epoch / device-memory epoch", None, None, "<=", True, "", note=loader.get("reason", "not run"))

    estimate = sections.get("epoch-estimate", {})
    if estimate.get("status") == "ok":
        add("6. 240-epoch CIFAR-100 run, estimated (H100/H200), eager", estimate["minutes"], 35.0, "<=", cuda, "GPU target; this run is on CPU", "min")
        for mode, values in estimate.get("modes", {}).items():
            add(f"6. 240-epoch CIFAR-100 run, estimated (H100/H200), {values.get('label', mode)}", values["minutes"], 35.0, "<=", cuda, "GPU target; this run is on CPU", "min")
        fast = estimate.get("modes", {}).get("fast")
        if fast:
            add("8. --fast epoch fed by its device views / the same steps from device memory", fast["x_device_memory"], 1.05, "<=", cuda, "GPU target; this run is on CPU", "x")
            add("9. 240-epoch res32x4 -> resnet8x4 SLD run with --fast, estimated", fast["minutes"], 15.0, "<=", cuda, "GPU target; this run is on CPU", "min")
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
    parts += ["", "## Targets", "", target_table(record["targets"]), ""]
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
