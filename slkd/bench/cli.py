"""slkd-bench: run KD, DKD, CRD, MLKD and SLD (and named variants of them) side by side, and
report what the runs recorded.

    slkd-bench run --pair res32x4_res8x4 --methods KD,DKD,CRD,MLKD,SLD --seeds 0,1,2
                   [--ablation sld] [--protocol 1,2] [--baseline NAME]
                   [--out DIR] [--epochs N] [--set KEY VALUE]... [--parallel N]
                   [--device cpu|cuda] [--amp none|bf16|fp16] [--fast] [--smoke | --synthetic N]
                   [--mdistiller-root PATH] [--dry-run]
    slkd-bench report DIR [--baseline NAME] [--import PATH...]

``run`` trains every (variant, seed) with slkd-train in its own process, into
``DIR/<pair>/<variant>/seed<k>/`` (a variant: a method, or a name from
``mdistiller_configs/variants.yaml`` such as ``DKD+swap``, optionally ``@1view``/``@2views``);
run it again to continue a stopped benchmark (finished runs are skipped, half-done ones
resumed). ``report`` writes ``summary.md``,
``summary.csv``, ``curves.png``, ``losses.png`` and ``swaps.png`` next to the runs;
``--import`` adds training logs in mdistiller's ``worklog.txt`` format as rows and curves.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from slkd.bench.sources import METHODS, BenchError
from slkd.host.registry import HostNotFound

DEFAULT_OUT = os.path.join("output", "bench")


def parse_args(argv=None):
    parser = argparse.ArgumentParser("slkd-bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train every method and seed (resumable)")
    run.add_argument("--pair", default="res32x4_res8x4", help="teacher_student pair(s), comma-separated (default res32x4_res8x4)")
    run.add_argument("--methods", default=None, help=f"comma-separated methods ({','.join(METHODS)}) or variants of variants.yaml, e.g. DKD+swap, KD+LS, SLD-ts, DKD@2views (default: all methods, unless --ablation)")
    run.add_argument("--ablation", default=None, metavar="NAME", help="add an ablation's variants (variants.yaml: sld)")
    run.add_argument("--protocol", default=None, metavar="VIEWS", help="run each logit method and variant at these numbers of views: 1, 2 or 1,2 (NAME@1view, NAME@2views)")
    run.add_argument("--baseline", default=None, metavar="NAME", help="the variant the report compares the others with (default: the first)")
    run.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    run.add_argument("--out", default=DEFAULT_OUT, help=f"benchmark folder (default {DEFAULT_OUT})")
    run.add_argument("--epochs", type=int, default=None, help="SOLVER.EPOCHS for every run (the decay stages stay as configured)")
    run.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="a config override for every run; repeatable")
    run.add_argument("--parallel", type=int, default=1, help="runs at once (default 1); spread over the visible GPUs")
    run.add_argument("--device", choices=("cpu", "cuda"), default=None, help="slkd-train --device (default: cuda when available; cpu with --smoke)")
    run.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="slkd-train --amp for every run")
    run.add_argument("--fast", action="store_true", help="SLKD.FAST True for every run (CUDA graphs, fused loss, bf16 unless --amp, channels-last, device views; GPU)")
    run.add_argument("--smoke", action="store_true", help="slkd-train --smoke for every run: synthetic data, random teachers, 2 short epochs")
    run.add_argument("--synthetic", type=int, default=None, metavar="N", help="slkd-train --synthetic N for every run: the configs as they are on N synthetic images with random teachers (timing without the data)")
    run.add_argument("--mdistiller-root", default=None, help="mdistiller checkout (default: $SLKD_MDISTILLER_PATH, else ./mdistiller, else the installed one)")
    run.add_argument("--dry-run", action="store_true", help="print what each run would do, and run nothing")

    report = commands.add_parser("report", help="tables and figures from the run folders")
    report.add_argument("dir", help="the benchmark folder given to run --out")
    report.add_argument("--baseline", default=None, metavar="NAME", help="the variant the others are compared with (default: run's --baseline, else the first)")
    report.add_argument("--import", dest="imports", nargs="+", default=[], metavar="PATH", help="training logs in mdistiller's worklog.txt format (files or run folders), shown as extra rows and curves labelled imported")
    return parser.parse_args(argv)


def run_command(args) -> int:
    from slkd.bench import plan, sources, variants
    from slkd.bench.configs import parse_overrides
    from slkd.bench.report import write_manifest
    from slkd.bench.run import Options, execute

    if args.parallel < 1:
        raise BenchError(f"--parallel is {args.parallel}: it must be 1 or more")
    if args.smoke and args.synthetic is not None:
        raise BenchError("--smoke and --synthetic exclude each other: --smoke already runs on synthetic data")
    if args.epochs is not None and args.epochs < 1:
        raise BenchError(f"--epochs is {args.epochs}: it must be 1 or more")
    pairs = sources.parse_pairs(args.pair)
    chosen = variants.select(args.methods if args.methods is not None or args.ablation else ",".join(METHODS), args.ablation, args.protocol)
    baseline = _baseline(args.baseline, chosen)
    seeds = sources.parse_seeds(args.seeds)
    overrides = tuple(parse_overrides(args.set))
    options = Options(
        epochs=args.epochs,
        overrides=overrides,
        parallel=args.parallel,
        device=args.device,
        amp=args.amp,
        fast=args.fast,
        smoke=args.smoke,
        synthetic=args.synthetic,
        dry_run=args.dry_run,
    )
    if options.fast and options.run_options()["device"] != "cuda":
        raise BenchError(
            f"--fast turns on CUDA graphs, the fused loss and bf16 for a GPU, and these runs are on "
            f"{options.run_options()['device']}: drop --fast, or give --device cuda on a machine with a GPU"
        )
    host = sources.host_root(args.mdistiller_root)
    os.environ["SLKD_MDISTILLER_PATH"] = str(host)  # the runs use the same mdistiller
    runs = plan.plan(pairs, chosen, seeds, Path(args.out), host, args.smoke)
    print(f"[slkd-bench] {len(runs)} runs ({', '.join(p.name for p in pairs)}; {', '.join(v.name for v in chosen)}; seeds {','.join(map(str, seeds))}), mdistiller {host}", flush=True)
    for variant in chosen:
        if variant.overrides or variant.config:
            print(f"[slkd-bench]   {variant.describe()}", flush=True)
    if not args.dry_run and runs:
        write_manifest(runs[0].folder.parents[2], [v.name for v in chosen], baseline)
    outcomes = execute(runs, options, echo=lambda line: print(line, flush=True))
    return _print_outcomes(outcomes, runs, args.dry_run)


def _baseline(name, chosen) -> str:
    """``--baseline``, checked to be one of the chosen variants (default: the first)."""
    if name is None:
        return chosen[0].name
    names = [variant.name for variant in chosen]
    if name not in names:
        raise BenchError(f"--baseline {name} is not among this benchmark's variants: {', '.join(names)}")
    return name


def _print_outcomes(outcomes, runs, dry_run: bool) -> int:
    failed = [outcome for outcome in outcomes if not outcome.ok]
    counts = {}
    for outcome in outcomes:
        if outcome.ok:
            counts[outcome.action] = counts.get(outcome.action, 0) + 1
    words = {"done": "skipped (already done)", "start": "to start" if dry_run else "started", "resume": "to resume" if dry_run else "resumed"}
    parts = [f"{counts[action]} {words[action]}" for action in words if action in counts] + [f"{len(failed)} failed"]
    print(f"[slkd-bench] {len(outcomes)} runs: {', '.join(parts)}{' (dry run)' if dry_run else ''}")
    for outcome in failed:
        print(f"[slkd-bench] FAILED {outcome.run.label}: {outcome.message}", file=sys.stderr)
    if runs and not dry_run:
        if any(outcome.ok for outcome in outcomes):
            print(f"[slkd-bench] report: slkd-bench report {runs[0].folder.parents[2]}")
        else:
            print("[slkd-bench] no run finished or was done already: nothing to report; see the failures above")
    return 1 if failed else 0


def report_command(args) -> int:
    from slkd.bench.report import report

    for path in report(Path(args.dir), echo=print, imports=args.imports, baseline=args.baseline):
        print(f"[slkd-bench] wrote {path}")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # stop the runs as Ctrl-C does


def main(argv=None) -> int:
    """Console entry point: bad input prints one ``slkd-bench: error:`` line and exits 1."""
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run_command(args) if args.command == "run" else report_command(args)
    except (BenchError, HostNotFound) as error:
        print(f"slkd-bench: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slkd-bench: interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
