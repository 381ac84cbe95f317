"""Executing a benchmark: one slkd-train subprocess per run, N at a time, resumable.

Each run that is not done gets its config file (:mod:`slkd.bench.configs`) and one
``python -m slkd.run.train --cfg <folder>/bench_config.yaml --seed <k> [...]`` process whose
stdout and stderr go to ``<folder>/bench.log`` (appended, one header per attempt). With
several visible GPUs each new run goes to the GPU running the fewest (the lowest index
first: round-robin when runs take equally long) through ``CUDA_VISIBLE_DEVICES``. On CPUs,
parallel runs share the cores (``OMP_NUM_THREADS``, unless already set). A failed run is
reported with the end of its log and does not stop the others.

Not touched, and reported: a run that was done or half done with a different config (other
than where the output folder sits), so that one folder never mixes two protocols; and a run
whose slkd-train, started by an earlier slkd-bench that was killed, still runs (its pid is
in ``<folder>/bench.pid`` while it runs). Stopping slkd-bench (Ctrl-C, SIGTERM) stops its runs;
run it again to continue them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from slkd.bench import plan as planning
from slkd.bench.configs import FILE_NAME, protocol_differences, run_config, write_run_config

LOG_NAME = "bench.log"
PID_NAME = "bench.pid"  # the run's slkd-train process while it runs
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Options:
    """What ``slkd-bench run`` was asked, beyond which runs."""

    epochs: int | None = None
    overrides: tuple = ()
    parallel: int = 1
    device: str | None = None
    amp: str | None = None
    smoke: bool = False
    synthetic: int | None = None
    dry_run: bool = False

    @property
    def device_for_runs(self) -> str | None:
        """``--device``; smoke runs default to the CPU."""
        return self.device or ("cpu" if self.smoke else None)


@dataclass
class Outcome:
    """What happened to one run: ``action`` is done (skipped), start, resume, or running
    (left alone: an earlier slkd-bench's process still trains it)."""

    run: planning.Run
    action: str
    ok: bool = True
    message: str = ""


@dataclass
class _Job:
    run: planning.Run
    action: str
    command: list
    notes: list = field(default_factory=list)
    gpu: str | None = None
    process: subprocess.Popen | None = None
    log: object = None
    log_offset: int = 0
    started: float = 0.0


def execute(runs: list[planning.Run], options: Options, echo=print) -> list[Outcome]:
    """Run (or, with ``dry_run``, list) every run that is not done; one outcome per run."""
    outcomes, jobs = [], []
    for run in runs:
        outcome, job = _prepare(run, options)
        if job is None:
            outcomes.append(outcome)
            echo(f"[slkd-bench] {run.label}: {outcome.message}")
        else:
            jobs.append(job)
    if options.dry_run:
        for job in jobs:
            echo(f"[slkd-bench] {job.run.label}: would {job.action}: {' '.join(job.command)}")
            echo(f"[slkd-bench]     config {'; '.join(job.notes)}")
        return outcomes + [Outcome(job.run, job.action, True, "dry run") for job in jobs]
    return outcomes + _launch_all(jobs, options, echo)


def command(config_path: Path, seed: int, options: Options, resume: bool) -> list[str]:
    """The slkd-train command line of one run."""
    argv = [sys.executable, "-m", "slkd.run.train", "--cfg", str(config_path), "--seed", str(seed)]
    if options.device_for_runs:
        argv += ["--device", options.device_for_runs]
    if options.amp:
        argv += ["--amp", options.amp]
    if options.smoke:
        argv.append("--smoke")
    if options.synthetic is not None:
        argv += ["--synthetic", str(options.synthetic)]
    if resume:
        argv.append("--resume")
    return argv


def visible_gpus(device: str | None) -> list[str]:
    """The GPU ids runs may use: ``CUDA_VISIBLE_DEVICES`` when set, else torch's count."""
    if device == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def _prepare(run: planning.Run, options: Options):
    """``(outcome, None)`` for a run to leave alone, else ``(None, job)``."""
    running = _running_pid(run.folder)
    if running is not None:
        return Outcome(run, "running", False, (
            f"still running in process {running} (started by an earlier slkd-bench): "
            "left alone; wait for it or stop it, then run this again"
        )), None
    action = planning.state(run.folder)
    config, notes = run_config(
        run.method, run.pair, run.source, prefix=run.prefix, seed=run.seed, epochs=options.epochs, overrides=options.overrides
    )
    config_path = run.folder / FILE_NAME
    if action != planning.START and config_path.is_file():
        differences = protocol_differences(yaml.safe_load(config_path.read_text()) or {}, config)
        if differences:
            return Outcome(run, action, False, (
                f"{'finished' if action == planning.DONE else 'half done'} with other settings "
                f"({', '.join(differences)} differ from this benchmark's); left alone: use another "
                f"--out, or delete {run.folder} to run it again"
            )), None
    if action == planning.DONE:
        summary = planning.read_summary(run.folder)
        return Outcome(run, action, True, f"done ({summary['epochs_done']} epochs), skipped"), None
    if not options.dry_run:
        if action == planning.START:
            # a fresh start appends to metrics.jsonl: drop the lines of an unfinished attempt
            (run.folder / "metrics.jsonl").unlink(missing_ok=True)
        write_run_config(config_path, config, notes)
    return None, _Job(run, action, command(config_path, run.seed, options, action == planning.RESUME), notes)


def _launch_all(jobs: list[_Job], options: Options, echo) -> list[Outcome]:
    gpus = visible_gpus(options.device_for_runs) if jobs else []
    spread = len(gpus) > 1
    load = {gpu: 0 for gpu in gpus}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not gpus and options.parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // options.parallel))
    pending, running, outcomes = deque(jobs), [], []
    try:
        while pending or running:
            while pending and len(running) < options.parallel:
                job = pending.popleft()
                if spread:
                    job.gpu = min(gpus, key=lambda gpu: (load[gpu], gpus.index(gpu)))
                    load[job.gpu] += 1
                running.append(job)
                _start(job, env, echo)
            time.sleep(POLL_SECONDS)
            for job in [job for job in running if job.process.poll() is not None]:
                running.remove(job)
                if spread:
                    load[job.gpu] -= 1
                outcomes.append(_finish(job, echo))
    except BaseException:
        started = [job for job in running if job.process is not None]
        for job in started:
            job.process.terminate()
        for job in started:
            try:
                job.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.process.kill()
            job.log.close()
            (job.run.folder / PID_NAME).unlink(missing_ok=True)
        raise
    return outcomes


def _start(job: _Job, env: dict, echo) -> None:
    job.run.folder.mkdir(parents=True, exist_ok=True)
    job.log = open(job.run.folder / LOG_NAME, "a")
    job.log.write(f"=== slkd-bench {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(job.command)}\n")
    job.log.flush()
    job.log_offset = job.log.tell()
    child_env = dict(env, CUDA_VISIBLE_DEVICES=job.gpu) if job.gpu is not None else env
    job.started = time.perf_counter()
    job.process = subprocess.Popen(job.command, stdout=job.log, stderr=subprocess.STDOUT, env=child_env, stdin=subprocess.DEVNULL)
    (job.run.folder / PID_NAME).write_text(f"{job.process.pid}\n")
    where = f" on GPU {job.gpu}" if job.gpu is not None else ""
    echo(f"[slkd-bench] {job.run.label}: {job.action}{where}, log {job.run.folder / LOG_NAME}")


def _finish(job: _Job, echo) -> Outcome:
    job.log.close()
    seconds = time.perf_counter() - job.started
    code = job.process.returncode
    summary = planning.read_summary(job.run.folder)
    if code == 0 and planning.is_complete(summary):
        outcome = Outcome(job.run, job.action, True, f"finished in {seconds:.0f} s, best top-1 {summary['best_acc']:.2f}")
    elif code == 0:
        done = "no summary.json" if summary is None else f"summary.json records {summary.get('epochs_done')} of {summary.get('epochs')} epochs"
        outcome = Outcome(job.run, job.action, False, f"slkd-train exited 0 but {done}; see {job.run.folder / LOG_NAME}")
    else:
        outcome = Outcome(job.run, job.action, False, f"slkd-train exited {code}: {_log_tail(job)}; log {job.run.folder / LOG_NAME}")
    (job.run.folder / PID_NAME).unlink(missing_ok=True)
    echo(f"[slkd-bench] {job.run.label}: {'' if outcome.ok else 'FAILED: '}{outcome.message}")
    return outcome


def _running_pid(folder: Path) -> int | None:
    """The pid in ``bench.pid`` when that process is alive and is slkd-train, else None."""
    try:
        pid = int((folder / PID_NAME).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path("/proc").is_dir() else b"slkd.run.train"
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid if b"slkd.run.train" in cmdline else None


def _log_tail(job: _Job, lines: int = 3) -> str:
    with open(job.run.folder / LOG_NAME, errors="replace") as log:
        log.seek(job.log_offset)
        text = [line.strip() for line in log.read().splitlines() if line.strip()]
    return " | ".join(text[-lines:]) or "(no output)"
