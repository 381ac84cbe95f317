"""The summary of ``benchmarks/gpu_fast_check.sh``: the GPU targets of ``--fast``, read from what
its parts wrote into its output folder ``OUT``::

    python benchmarks/speed/fast_check.py OUT "the script's command line"

reads ``OUT/sld_speed.json`` (sections ``sync`` and ``epoch-estimate``), ``OUT/bench_one/``
and ``OUT/bench_four/`` (``slkd-bench run`` folders: one run alone, then four at once on
the same GPU) and ``OUT/machine.json``, and writes ``OUT/fast_check.json`` and
``OUT/fast_check.md`` with the card and the command. A part that did not run or failed is
reported as such, never guessed.

Targets (each ``PASS``, ``FAIL`` or ``n.a.`` with the reason):

1. an epoch with ``--fast`` fed by its device views within 1.05 x the same steps fed from
   device memory (``epoch-estimate``'s ``modes.fast.x_device_memory``);
2. the 240-epoch res32x4 -> resnet8x4 SLD run with ``--fast``, estimated from the measured
   epoch, evaluation and checkpoint: at most 15 minutes;
3. ``slkd-bench --parallel 4 --fast`` on one GPU: the four runs' images per second together
   at least 2.5 x one run's alone. Each run's rate is its epoch ``EPOCH``'s (not the first,
   which records the CUDA graphs; the runs evaluate only at their last epoch, so the four
   runs' middle epochs overlap). Summing the four rates assumes their epochs ``EPOCH`` ran at
   the same time; the lower bound ``four x images / the slowest run's epoch seconds`` is
   given beside it;
4. fp16 with CUDA graphs passes the sync check (``sync``'s ``slkd-graphs`` fp16 row), or the
   row's error says why it cannot;
5. the ``--fast`` runs train: every epoch's loss finite, the last below the first.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

EPOCH = 2  # the epoch whose images per second are compared (the first one records the graphs)
TARGETS = {"epoch_vs_device_memory": 1.05, "run_minutes": 15.0, "parallel_speedup": 2.5}


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def bench_runs(folder: Path) -> dict:
    """``{seed: [epoch metrics, ...]}`` of the slkd-bench runs under ``folder``."""
    runs = {}
    for metrics in sorted(folder.rglob("metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        runs[metrics.parent.name] = rows
    return runs


def epoch_row(rows: list, epoch: int):
    return next((row for row in rows if row.get("epoch") == epoch), None)


def parallel_speedup(one: dict, four: dict, epoch: int = EPOCH) -> dict:
    """Target 3 from the runs of ``bench_one`` (one) and ``bench_four`` (four at once)."""
    alone = [epoch_row(rows, epoch) for rows in one.values()]
    together = [epoch_row(rows, epoch) for rows in four.values()]
    if len(alone) != 1 or alone[0] is None:
        return {"reason": f"the single run has no epoch {epoch} ({len(one)} run(s) found)"}
    if len(together) != 4 or any(row is None for row in together):
        return {"reason": f"{sum(row is not None for row in together)} of the 4 parallel runs have an epoch {epoch}"}
    single = alone[0]["images_per_second"]
    total = sum(row["images_per_second"] for row in together)
    lower = sum(row["train_images"] for row in together) / max(row["train_seconds"] for row in together)
    return {
        "epoch": epoch,
        "one_run_images_per_s": single,
        "four_runs_images_per_s": [row["images_per_second"] for row in together],
        "four_runs_total_images_per_s": total,
        "speedup": total / single,
        "speedup_lower_bound": lower / single,
    }


def training_health(runs: dict) -> dict:
    """Target 5: every epoch's train loss finite and the last below the first, per run."""
    verdicts = {}
    for seed, rows in runs.items():
        losses = [row.get("train_loss") for row in rows]
        finite = bool(losses) and all(isinstance(value, (int, float)) and math.isfinite(value) for value in losses)
        verdicts[seed] = {"train_loss": losses, "finite": finite, "falling": finite and len(losses) > 1 and losses[-1] < losses[0]}
    return verdicts


def fp16_graphs_sync(record) -> dict:
    """Target 4 from the ``sync`` section of the benchmark's record."""
    section = (record or {}).get("sections", {}).get("sync")
    if not section or section.get("status") != "ok":
        return {"reason": f"sync section {section.get('status') if section else 'missing'}: {(section or {}).get('reason', 'not run')}"}
    row = next((check for check in section["results"] if (check["variant"], check["precision"]) == ("slkd-graphs", "fp16")), None)
    if row is None:
        return {"reason": "no slkd-graphs fp16 row (the fused loss is unavailable, or fp16 was not asked for)"}
    return {"passed": row["passed"], "error": row["error"], "where": row["where"], "control_detected": section.get("control_detected")}


def estimate_fast(record) -> dict:
    """Targets 1 and 2 from the ``epoch-estimate`` section's ``fast`` mode."""
    section = (record or {}).get("sections", {}).get("epoch-estimate")
    if not section or section.get("status") != "ok":
        return {"reason": f"epoch-estimate section {section.get('status') if section else 'missing'}: {(section or {}).get('reason', 'not run')}"}
    fast = section.get("modes", {}).get("fast")
    if fast is None:
        return {"reason": "no --fast mode in the estimate: " + "; ".join(section.get("notes", []))}
    return dict(fast)


def verdict(measured, threshold, compare, reason=None) -> dict:
    if measured is None:
        return {"measured": None, "threshold": threshold, "verdict": "n.a.", "note": reason or "not measured"}
    passed = measured <= threshold if compare == "<=" else measured >= threshold
    return {"measured": measured, "threshold": threshold, "compare": compare, "verdict": "PASS" if passed else "FAIL", "note": reason or ""}


def summarize(out: Path, command: str) -> dict:
    record = read_json(out / "sld_speed.json")
    machine = read_json(out / "machine.json") or {}
    fast = estimate_fast(record)
    sync = fp16_graphs_sync(record)
    one, four = bench_runs(out / "bench_one"), bench_runs(out / "bench_four")
    parallel = parallel_speedup(one, four)
    health = training_health({**{f"one/{k}": v for k, v in one.items()}, **{f"four/{k}": v for k, v in four.items()}})
    cpu = machine.get("device") == "cpu"
    why_cpu = "a CPU dry run: the script's plumbing, not a measurement" if cpu else None
    targets = {
        "1. --fast epoch fed by its device views / from device memory": verdict(fast.get("x_device_memory"), TARGETS["epoch_vs_device_memory"], "<=", fast.get("reason") or why_cpu),
        "2. 240-epoch res32x4 -> resnet8x4 SLD with --fast, estimated (min)": verdict(fast.get("minutes"), TARGETS["run_minutes"], "<=", fast.get("reason") or why_cpu),
        "3. slkd-bench --parallel 4 --fast: total images/s / one run's": verdict(parallel.get("speedup"), TARGETS["parallel_speedup"], ">=", parallel.get("reason") or why_cpu),
    }
    if "passed" in sync:
        note = "" if sync["passed"] else f"{sync['error']} at {' < '.join(reversed(sync['where'] or []))}"
        targets["4. fp16 with CUDA graphs: no host-device sync"] = {"measured": sync["passed"], "verdict": "PASS" if sync["passed"] else "FAIL", "note": note}
    else:
        targets["4. fp16 with CUDA graphs: no host-device sync"] = {"measured": None, "verdict": "n.a.", "note": sync["reason"]}
    trains = bool(health) and all(run["finite"] and run["falling"] for run in health.values())
    targets["5. the --fast runs train (finite, falling loss)"] = {"measured": trains if health else None, "verdict": ("PASS" if trains else "FAIL") if health else "n.a.", "note": "" if health else "no run's metrics found"}
    if cpu:
        for target in targets.values():
            if why_cpu not in target["note"]:
                target["note"] = (target["note"] + "; " if target["note"] else "") + why_cpu
    return {
        "schema": "slkd-gpu-fast-check/1",
        "command": command,
        "card": machine.get("card"),
        "machine": machine,
        "targets": targets,
        "estimate_fast": fast,
        "parallel": parallel,
        "fp16_graphs_sync": sync,
        "training": health,
    }


def markdown(summary: dict) -> str:
    lines = [
        f"# gpu_fast_check: {summary['machine'].get('device_name', '?')} ({summary['card']})",
        "",
        f"Command: `{summary['command']}`",
        "",
        "| target | measured | target value | verdict | note |",
        "|---|---|---|---|---|",
    ]
    for name, target in summary["targets"].items():
        measured = target["measured"]
        shown = "-" if measured is None else (f"{measured:.3f}" if isinstance(measured, float) else str(measured))
        bound = f"{target.get('compare', '')} {target['threshold']}".strip() if "threshold" in target else "pass"
        lines.append(f"| {name} | {shown} | {bound} | {target['verdict']} | {target['note']} |")
    parallel = summary["parallel"]
    if "speedup" in parallel:
        lines += ["", f"Epoch {parallel['epoch']}: one run alone {parallel['one_run_images_per_s']:.4g} images/s; four at once "
                  + ", ".join(f"{rate:.4g}" for rate in parallel["four_runs_images_per_s"])
                  + f" images/s (sum {parallel['four_runs_total_images_per_s']:.4g}; lower bound {parallel['speedup_lower_bound']:.2f} x)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: fast_check.py OUT COMMAND", file=sys.stderr)
        return 2
    out = Path(argv[0])
    summary = summarize(out, argv[1])
    (out / "fast_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (out / "fast_check.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
