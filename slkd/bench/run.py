"""Executing a benchmark: one slkd-train subprocess per run, N at a time, resumable.

Every run's config (:mod:`slkd.bench.configs`) is built first, so that a bad ``--set`` stops
the benchmark before anything starts. Then, when a run's turn comes, slkd-bench claims its
folder (an ``fcntl.flock`` on ``<folder>/bench.lock``, held until the run ends and released by
the system when slkd-bench dies), reads the folder's state, and only then writes
``bench_config.yaml`` and starts ``python -m slkd.run.train --cfg <folder>/bench_config.yaml
--seed <k> [...]``, whose stdout and stderr go to ``<folder>/bench.log`` (appended, one header
per attempt). A run finished meanwhile by another slkd-bench is skipped. With several visible
GPUs each new run goes to the GPU running the fewest (the lowest index first: round-robin
when runs take equally long) through ``CUDA_VISIBLE_DEVICES``. On CPUs, parallel runs share
the cores (``OMP_NUM_THREADS``, unless already set). A failed run is reported with the end of
its log and does not stop the others.

Not touched, and reported: a run that was done or half done with a different config (other
than where the output folder sits) or other run options (``--smoke``/``--synthetic``, the
device: as the run's ``summary.json`` records them; ``--amp`` is ``SLKD.AMP`` in the
config), so that one folder never mixes two protocols; a run claimed by another live
slkd-bench; and a run whose slkd-train, started by an earlier slkd-bench that was killed,
still runs (its pid is in ``<folder>/bench.pid`` while it runs). Stopping slkd-bench (Ctrl-C,
SIGTERM) stops its runs; run it again to continue them.
"""

from __future__ import annotations

import fcntl
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
from slkd.bench.variants import VARIANT_NAME, write_variant
from slkd.utils import locks
from slkd.utils.locks import Claimed

LOG_NAME = "bench.log"
PID_NAME = "bench.pid"  # the run's slkd-train process while it runs
LOCK_NAME = "bench.lock"  # locked by the slkd-bench running the folder's run; holds its pid
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Options:
    """What ``slkd-bench run`` was asked, beyond which runs."""

    epochs: int | None = None
    overrides: tuple = ()
    parallel: int = 1
    device: str | None = None
    amp: str | None = None
    fast: bool = False
    smoke: bool = False
    synthetic: int | None = None
    dry_run: bool = False

    @property
    def device_for_runs(self) -> str | None:
        """``--device``; smoke runs default to the CPU."""
        return self.device or ("cpu" if self.smoke else None)

    def run_options(self) -> dict:
        """The data and device of the runs, as :func:`slkd.bench.plan.recorded_options` will
        read them from the runs' summaries (no ``--device``: cuda when torch sees a GPU)."""
        data = "smoke" if self.smoke else ("real" if self.synthetic is None else f"synthetic {self.synthetic}")
        device = self.device_for_runs
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return {"data": data, "device": device}


@dataclass
class Outcome:
    """What happened to one run: ``action`` is done (skipped), start, resume, or running
    (left alone: another slkd-bench, or an earlier one's process, trains it)."""

    run: planning.Run
    action: str
    ok: bool = True
    message: str = ""


@dataclass
class _Job:
    run: planning.Run
    config: dict
    notes: list = field(default_factory=list)
    action: str = ""
    command: list = field(default_factory=list)
    lock: object = None
    gpu: str | None = None
    process: subprocess.Popen | None = None
    log: object = None
    log_offset: int = 0
    started: float = 0.0


def execute(runs: list[planning.Run], options: Options, echo=print) -> list[Outcome]:
    """Run (or, with ``dry_run``, list) every run that is not done; one outcome per run."""
    jobs = [_job(run, options) for run in runs]
    if options.dry_run:
        wanted = options.run_options()
        return [_dry_run(job, options, wanted, echo) for job in jobs]
    return _launch_all(jobs, options, echo)


def command(config_path: Path, seed: int, options: Options, resume: bool) -> list[str]:
    """The slkd-train command line of one run (``--amp`` is in its config, as ``SLKD.AMP``)."""
    argv = [sys.executable, "-m", "slkd.run.train", "--cfg", str(config_path), "--seed", str(seed)]
    if options.device_for_runs:
        argv += ["--device", options.device_for_runs]
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


def claim(folder: Path):
    """Claim the run's folder for this slkd-bench (:func:`slkd.utils.locks.claim` of
    ``bench.lock``); raises :class:`Claimed` when another process holds it."""
    return locks.claim(folder, LOCK_NAME)


def _job(run: planning.Run, options: Options) -> _Job:
    """The run's job with its config built (its folder is not looked at yet)."""
    config, notes = run_config(
        run.method, run.pair, run.source, prefix=run.prefix, seed=run.seed,
        epochs=options.epochs, overrides=options.overrides, amp=options.amp, fast=options.fast, variant=run.variant,
    )
    return _Job(run, config, notes)


def _claimed_by(folder: Path) -> str | None:
    """The pid written by the process that claims ``folder`` now, None when none does (read
    without claiming or writing anything)."""
    try:
        lock = open(folder / LOCK_NAME)
    except FileNotFoundError:
        return None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return lock.read().strip() or "unknown"
    return None


def _dry_run(job: _Job, options: Options, wanted: dict, echo) -> Outcome:
    """What the run would do, read without claiming or writing anything."""
    holder = _claimed_by(job.run.folder)
    outcome = _claimed_outcome(job.run, holder) if holder else _decide(job, options, wanted)
    if outcome is not None:
        echo(f"[slkd-bench] {job.run.label}: {outcome.message}")
        return outcome
    echo(f"[slkd-bench] {job.run.label}: would {job.action}: {' '.join(job.command)}")
    echo(f"[slkd-bench]     config {'; '.join(job.notes)}")
    return Outcome(job.run, job.action, True, "dry run")


def _claim_and_prepare(job: _Job, options: Options, wanted: dict) -> Outcome | None:
    """Claim the run's folder, read its state and prepare it to start; an outcome (and no
    claim kept) when the run is left alone or skipped."""
    try:
        job.lock = claim(job.run.folder)
    except Claimed as claimed:
        return _claimed_outcome(job.run, claimed.holder)
    try:
        outcome = _decide(job, options, wanted)
        if outcome is None:
            _prepare(job)
    except BaseException:
        job.lock.close()
        raise
    if outcome is not None:
        job.lock.close()
    return outcome


def _prepare(job: _Job) -> None:
    """Write the run's config and its variant; before a fresh start, drop the metrics of an
    unfinished attempt (slkd-train appends to metrics.jsonl)."""
    if job.action == planning.START:
        (job.run.folder / "metrics.jsonl").unlink(missing_ok=True)
    write_run_config(job.run.folder / FILE_NAME, job.config, job.notes)
    if job.run.variant is not None:
        write_variant(job.run.folder / VARIANT_NAME, job.run.variant)


def _claimed_outcome(run: planning.Run, holder: str) -> Outcome:
    return Outcome(run, "running", False, (
        f"claimed by another slkd-bench (process {holder}): left alone; "
        "wait for that one to finish it, then run this again"
    ))


def _decide(job: _Job, options: Options, wanted: dict) -> Outcome | None:
    """Read the run's folder now: an outcome when it is left alone or done, else None with
    ``job.action`` and ``job.command`` set."""
    run = job.run
    running = _running_pid(run.folder)
    if running is not None:
        return Outcome(run, "running", False, (
            f"still running in process {running} (started by an earlier slkd-bench): "
            "left alone; wait for it or stop it, then run this again"
        ))
    action = planning.state(run.folder)
    if action != planning.START:
        differences = _differences(run.folder, job.config, wanted)
        if differences:
            return Outcome(run, action, False, (
                f"{'finished' if action == planning.DONE else 'half done'} with other settings "
                f"({', '.join(differences)} differ from this benchmark's); left alone: use another "
                f"--out, or delete {run.folder} to run it again"
            ))
    if action == planning.DONE:
        summary = planning.read_summary(run.folder)
        return Outcome(run, action, True, f"done ({summary['epochs_done']} epochs), skipped")
    job.action = action
    job.command = command(run.folder / FILE_NAME, run.seed, options, action == planning.RESUME)
    return None


def _differences(folder: Path, config: dict, wanted: dict) -> list[str]:
    """What differs between the run recorded in ``folder`` and the one asked: config keys
    (from ``bench_config.yaml``, when slkd-bench wrote one) and run options (``data``,
    ``device``, from the run's ``summary.json``; one it does not record counts as differing)."""
    config_path = folder / FILE_NAME
    differences = []
    if config_path.is_file():
        differences = protocol_differences(yaml.safe_load(config_path.read_text()) or {}, config)
    recorded = planning.recorded_options(planning.read_summary(folder))
    return differences + [key for key in wanted if recorded.get(key) != wanted[key]]


def _launch_all(jobs: list[_Job], options: Options, echo) -> list[Outcome]:
    """Claim, prepare and run the jobs, ``options.parallel`` at a time, in order."""
    wanted = options.run_options() if jobs else {}
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
                outcome = _claim_and_prepare(job, options, wanted)
                if outcome is not None:
                    outcomes.append(outcome)
                    echo(f"[slkd-bench] {job.run.label}: {outcome.message}")
                    continue
                if spread:
                    job.gpu = min(gpus, key=lambda gpu: (load[gpu], gpus.index(gpu)))
                    load[job.gpu] += 1
                running.append(job)
                _start(job, env, echo)
            time.sleep(POLL_SECONDS if running else 0)
            for job in [job for job in running if job.process.poll() is not None]:
                running.remove(job)
                if spread:
                    load[job.gpu] -= 1
                outcomes.append(_finish(job, echo))
    except BaseException:
        _stop(running)
        raise
    return outcomes


def _stop(running: list[_Job]) -> None:
    """Stop the started runs, and give up their claims."""
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
    for job in running:
        job.lock.close()


def _start(job: _Job, env: dict, echo) -> None:
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
    job.lock.close()
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
