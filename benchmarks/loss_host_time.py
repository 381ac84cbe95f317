"""Host time per call of the SLD loss's pieces on a GPU: where a standalone loss call's time goes.

At CIFAR sizes the GPU finishes the loss's kernels long before the host has launched them, so
a forward and backward pass of the loss costs what the host spends on it: the dispatch of each
torch op, each Triton launch, and autograd's engine. This script times each piece on its own,
for the two sizes of target 1 in benchmarks/README.md (both views' rows: 128x100 and 1024x1000):

    python3 benchmarks/loss_host_time.py --out benchmarks/results/<folder>/loss_host_time.json

Each case runs ``--warmup`` calls, then ``--iters`` calls without synchronising; ``host_us`` is
the host's time per call for those, ``total_us`` the same loop up to a synchronisation at its
end (so the GPU's share shows where it exceeds the host's). CUDA only: the fused kernels are
compiled for the GPU, and on a CPU nothing here would mean the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from slkd.losses.sld import SLD_DEFAULTS

SIZES = ((128, 100), (1024, 1000))
TEMPERATURES = SLD_DEFAULTS["TEMPERATURES"]
EPOCH_ON = SLD_DEFAULTS["GAMMA"] + 50  # pseudo-teacher on


def host_time(fn, iters: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    tick = time.perf_counter()
    for _ in range(iters):
        fn()
    host = (time.perf_counter() - tick) / iters * 1e6
    torch.cuda.synchronize()
    total = (time.perf_counter() - tick) / iters * 1e6
    return {"host_us": host, "total_us": total}


def cases(rows: int, classes: int, device: torch.device) -> dict:
    """``{name: closure}`` for one size: from a single torch op up to the loss as SLD calls it."""
    from slkd.losses import sld_fused
    from slkd.losses.sld import SLDLoss, _SwappedKL

    generator = torch.Generator().manual_seed(0)
    student = torch.randn(rows, classes, generator=generator).to(device).requires_grad_()
    teacher = torch.randn(rows, classes, generator=generator).to(device)
    target = torch.randint(0, classes, (rows,), generator=generator).to(device)
    temps = torch.tensor(TEMPERATURES, device=device)
    scratch = torch.zeros(16, device=device)
    block, warps = sld_fused.launch_shape(classes)
    terms = torch.empty((2, rows), device=device)
    swapped = torch.empty_like(terms)
    grad_ts = torch.empty((rows, classes), device=device)
    grad_ss = torch.empty_like(grad_ts)
    detached = student.detach()
    half = rows // 2  # rows per view

    def triton_launch():
        sld_fused._sld_forward_kernel[(rows,)](
            detached, teacher, target, temps, terms, swapped, grad_ts, grad_ss,
            rows, classes, detached.stride(0), teacher.stride(0),
            NUM_TEMPS=len(TEMPERATURES), BLOCK=block, TEACHER_SWAP=True, PSEUDO=True, DETACH=False,
            NEEDS_GRAD=True, FP64=False, num_warps=warps,
        )  # fmt: skip

    def fused_function_and_grad():
        per_row, _ = sld_fused.FusedSwappedKL.apply(student, teacher, target, temps, True, True, False)
        return torch.autograd.grad(per_row.sum(), student)

    def eager_function_and_grad():
        ts_rows, ss_rows, _ = _SwappedKL.apply(student, teacher, target, temps, True, True, False)
        return torch.autograd.grad((ts_rows + ss_rows).sum(), student)

    def as_sld_calls_it(loss):
        def run():  # slkd.host.distillers.SLD: per-view means summed, both terms
            sld_terms = loss.terms(student, teacher, target, EPOCH_ON)
            total = sld_terms.teacher_swap_loss.sum() / half + sld_terms.student_swap_loss.sum() / half
            return torch.autograd.grad(total, student)

        return run

    return {
        "one torch op (in-place add on 16 numbers)": lambda: scratch.add_(1),
        "torch.empty((2, rows))": lambda: torch.empty((2, rows), device=device),
        "autograd.grad of (z * 2).sum() (autograd's floor)": lambda: torch.autograd.grad((student * 2).sum(), student),
        "Triton forward kernel launch": triton_launch,
        "FusedSwappedKL.apply, forward only": lambda: sld_fused.FusedSwappedKL.apply(student, teacher, target, temps, True, True, False),
        "FusedSwappedKL forward + sum + autograd.grad": fused_function_and_grad,
        "eager _SwappedKL forward + sum + autograd.grad": eager_function_and_grad,
        "SLDLoss(fused=True) as the SLD distiller calls it + autograd.grad": as_sld_calls_it(SLDLoss(fused=True).to(device)),
        "SLDLoss(fused=False) as the SLD distiller calls it + autograd.grad": as_sld_calls_it(SLDLoss().to(device)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--out", default=None, help="write the JSON record here (the markdown table beside it, .md)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("loss_host_time.py needs a CUDA GPU (it times kernel launches); run it on a GPU machine", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    results = []
    for rows, classes in SIZES:
        for name, fn in cases(rows, classes, device).items():
            results.append({"size": f"{rows}x{classes}", "case": name, **host_time(fn, args.iters, args.warmup)})
    lines = ["| size (both views' rows) | case | host us / call | us / call to a final sync |", "|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['case']} | {r['host_us']:.1f} | {r['total_us']:.1f} |" for r in results]
    table = "\n".join(lines)
    print(table)
    if args.out:
        import triton

        record = {
            "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "iters": args.iters,
            "warmup": args.warmup,
            "results": results,
        }
        out = Path(args.out)
        out.write_text(json.dumps(record, indent=1) + "\n")
        out.with_suffix(".md").write_text(f"# Host time per call, {record['device']}, torch {record['torch']}, Triton {record['triton']}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
