"""slkd-bench: planning, running, resuming and reporting.

Without mdistiller: the report on hand-written run folders (numbers checked exactly, runs
with other settings kept apart), the run states, the scheduler with stand-in commands (GPU
spreading, failures, claims on run folders, runs done meanwhile, reruns with other options),
the configs' overrides, and the CLI's errors. With mdistiller (``host`` fixture): the whole benchmark with ``--smoke`` on a CPU,
its report, reruns that skip or resume, a failing run, and the res32x4_res8x4 plan.
"""

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from slkd.bench import plan as planning
from slkd.bench import run as bench_run
from slkd.bench.cli import _print_outcomes, main
from slkd.bench.configs import mdistiller_lr, parse_overrides, run_config
from slkd.bench.plan import recorded_options
from slkd.bench.published import TOP1
from slkd.bench.report import report
from slkd.bench.run import LOG_NAME, PID_NAME, Options, _running_pid, claim, command, execute
from slkd.bench.sources import BenchError, Pair, known_pairs

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["KD", "DKD", "CRD", "MLKD", "SLD"]


# --------------------------------------------------------------------------- hand-written runs
def write_run(root, pair, method, seed, best, last, *, epochs=3, done=None, views=None, memory=None, seconds=(2.0, 4.0), smoke=False, solver=None, data="real"):
    """A run folder as slkd's trainer leaves it, with the numbers given (``solver``: SOLVER
    keys of its config; ``views``: default 2 for SLD and MLKD, else 1; ``data``: as the
    trainer records it, real or synthetic N)."""
    folder = Path(root) / pair / method / f"seed{seed}"
    folder.mkdir(parents=True)
    done = epochs if done is None else done
    metrics = []
    for epoch in range(1, done + 1):
        line = {"epoch": epoch, "train_loss": 3.0 / epoch, "loss_ce": 1.0 / epoch, "loss_kd": 2.0 / epoch,
                "test_acc": best if epoch == 1 else last, "train_seconds": seconds[0], "eval_seconds": seconds[1]}
        if method == "SLD":
            line.update(teacher_swap_rate=0.3, student_swap_rate=0.5)
        if memory is not None:
            line["peak_memory_mib"] = memory + epoch
        metrics.append(line)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in metrics))
    views = views if views is not None else (2 if method in ("SLD", "MLKD") else 1)
    summary = {"best_acc": best, "last_acc": last, "epochs_done": done, "epochs": epochs, "seed": seed, "method": method,
               "views": views, "data": "synthetic 64" if smoke else data, "smoke": smoke, "device": "cuda"}
    (folder / "summary.json").write_text(json.dumps(summary))
    config = {
        "DISTILLER": {"TYPE": method}, "DATASET": {"TYPE": "cifar100"}, "SLD": {"GAMMA": 2},
        "SOLVER": solver or {"LR": 0.05}, "SLKD": {"SEED": seed, "AMP": "none"},
        "LOG": {"PREFIX": str(root)}, "EXPERIMENT": {"NAME": f"seed{seed}", "PROJECT": f"{pair}/{method}"},  # placement: differs per seed
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "environment.json").write_text(json.dumps({"gpus": ["Test GPU"], "torch": "9.9", "cuda": "12.0", "slkd": "0.1.0"}))
    return folder


def read_csv(path):
    with open(path, newline="") as stream:
        return {(row["pair"], row["method"]): row for row in csv.DictReader(stream)}


KD_BEST, KD_LAST = [73.1, 73.5, 72.9], [72.8, 73.4, 72.5]
SLD_BEST, SLD_LAST = [77.9, 78.4], [77.6, 78.1]


@pytest.fixture
def written(tmp_path):
    pair = "res32x4_res8x4"
    for seed, (best, last) in enumerate(zip(KD_BEST, KD_LAST)):
        write_run(tmp_path, pair, "KD", seed, best, last, memory=500.0)
    for seed, (best, last) in enumerate(zip(SLD_BEST, SLD_LAST)):
        write_run(tmp_path, pair, "SLD", seed, best, last, seconds=(3.0, 1.0))
    write_run(tmp_path, pair, "SLD", 2, 10.0, 10.0, done=1)  # unfinished: left out
    write_run(tmp_path, pair, "MLKD", 0, 77.0, 76.5)
    write_run(tmp_path, "res32x4_shuv1", "DKD", 0, 76.0, 75.0)
    return tmp_path


def test_report_numbers_are_exact(written):
    report(written, echo=lambda line: None)
    rows = read_csv(written / "summary.csv")
    assert list(rows) == [("res32x4_res8x4", "KD"), ("res32x4_res8x4", "MLKD"), ("res32x4_res8x4", "SLD"), ("res32x4_shuv1", "DKD")]
    kd, sld, mlkd = rows[("res32x4_res8x4", "KD")], rows[("res32x4_res8x4", "SLD")], rows[("res32x4_res8x4", "MLKD")]
    assert float(kd["best_mean"]) == statistics.mean(KD_BEST) and float(kd["best_std"]) == statistics.stdev(KD_BEST)
    assert float(kd["last_mean"]) == statistics.mean(KD_LAST) and float(kd["last_std"]) == statistics.stdev(KD_LAST)
    assert (kd["n"], kd["seeds"], kd["epochs"]) == ("3", "0 1 2", "3")
    assert float(sld["best_mean"]) == statistics.mean(SLD_BEST) and float(sld["last_std"]) == statistics.stdev(SLD_LAST)
    assert sld["n"] == "2", "the unfinished seed stays out of the numbers"
    assert mlkd["n"] == "1" and mlkd["best_std"] == "" and float(mlkd["best_mean"]) == 77.0
    assert float(kd["train_seconds_per_epoch"]) == 2.0 and float(kd["eval_seconds_per_epoch"]) == 4.0
    assert float(kd["peak_memory_mib"]) == 503.0 and sld["peak_memory_mib"] == ""
    assert (kd["views"], sld["views"], mlkd["views"]) == ("1", "2", "2")
    assert "RandAugment" in sld["augmentation"] and "RandAugment" not in kd["augmentation"]
    assert kd["data"] == "CIFAR-100"

    md = (written / "summary.md").read_text()
    kd_line = next(line for line in md.splitlines() if line.startswith("| res32x4_res8x4 | KD |"))
    assert f"{statistics.mean(KD_BEST):.2f} ± {statistics.stdev(KD_BEST):.2f}" in kd_line
    assert f"{statistics.mean(KD_LAST):.2f} ± {statistics.stdev(KD_LAST):.2f}" in kd_line
    assert "| 503 |" in kd_line
    sld_line = next(line for line in md.splitlines() if line.startswith("| res32x4_res8x4 | SLD |"))
    assert "not recorded" in sld_line
    assert "res32x4_res8x4 SLD seed2 (1/3 epochs)" in md
    assert "Test GPU" in md


def test_published_numbers_sit_beside_the_right_methods(written):
    report(written, echo=lambda line: None)
    rows = read_csv(written / "summary.csv")
    kd, mlkd, sld = (rows[("res32x4_res8x4", m)] for m in ("KD", "MLKD", "SLD"))
    assert float(kd["published"]) == 73.33 and "mdistiller README" in kd["published_source"]
    assert float(mlkd["published"]) == 77.08 and "logit-standardization" in mlkd["published_source"]
    assert sld["published"] == "" and sld["published_source"] == ""
    assert rows[("res32x4_shuv1", "DKD")]["published"] == "", "the published table (docs/method.md, section 6) has no res32x4_shuv1 row"
    md = (written / "summary.md").read_text()
    lines = {line.split(" | ")[1]: line for line in md.splitlines() if line.startswith("| res32x4_res8x4 |")}
    assert lines["KD"].rstrip().endswith("| 73.33 |")
    assert lines["MLKD"].rstrip().endswith("| 77.08 |")
    assert lines["SLD"].rstrip().endswith("|  |")
    assert "78.28" in md and "MLKD+LS" in md, "MLKD+LS is named in a note, not run"


def test_runs_that_differ_only_in_how_they_ran_are_averaged_together(tmp_path):
    """Loader workers, evaluation frequency, the exact opt-in modes: the same training."""
    pair = "res32x4_res8x4"
    for seed, best in enumerate([70.0, 72.0]):
        folder = write_run(tmp_path, pair, "KD", seed, best, best)
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config["SLKD"].update(LOADER={"WORKERS": 4 + seed}, EVAL_FREQ=1 + seed, CUDA_GRAPHS=bool(seed))
        config["DATASET"]["NUM_WORKERS"] = seed
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    warnings = []
    report(tmp_path, echo=warnings.append)
    row = read_csv(tmp_path / "summary.csv")[(pair, "KD")]
    assert (row["n"], row["seeds"], float(row["best_mean"])) == ("2", "0 1", 71.0)
    assert not [line for line in warnings if "not averaged together" in line]


def test_runs_with_other_settings_are_not_averaged_together(tmp_path):
    pair = "res32x4_res8x4"
    for seed, best in enumerate([70.0, 72.0]):
        write_run(tmp_path, pair, "KD", seed, best, best)
    write_run(tmp_path, pair, "KD", 2, 60.0, 60.0, solver={"LR": 0.1})
    write_run(tmp_path, pair, "KD", 3, 1.0, 1.0, data="synthetic 512")
    write_run(tmp_path, pair, "KD", 4, 50.0, 50.0, solver={"LR": 0.05, "LR_DECAY_STAGES": [1, 2]})
    warnings = []
    report(tmp_path, echo=warnings.append)
    with open(tmp_path / "summary.csv", newline="") as stream:
        table = {row["settings"]: row for row in csv.DictReader(stream)}
    labels = [
        "SOLVER.LR 0.05, SOLVER.LR_DECAY_STAGES [1, 2], data real",
        "SOLVER.LR 0.05, SOLVER.LR_DECAY_STAGES unset, data real",
        "SOLVER.LR 0.05, SOLVER.LR_DECAY_STAGES unset, data synthetic 512",
        "SOLVER.LR 0.1, SOLVER.LR_DECAY_STAGES unset, data real",
    ]
    assert sorted(table) == labels
    assert [(table[label]["seeds"], float(table[label]["best_mean"])) for label in labels] == [("4", 50.0), ("0 1", 71.0), ("3", 1.0), ("2", 60.0)]
    assert warnings == ["[slkd-bench] warning: res32x4_res8x4 KD: its runs differ in SOLVER.LR, SOLVER.LR_DECAY_STAGES, data; not averaged together: one row per setting"]
    md = (tmp_path / "summary.md").read_text()
    assert f"| {pair} | KD [{labels[1]}] | 2 | 71.00 ± 1.41 |" in md
    assert "not averaged together: res32x4_res8x4 KD: its runs differ in SOLVER.LR" in md


def test_report_shows_the_precision(tmp_path):
    write_run(tmp_path, "res56_res20", "KD", 0, 70.0, 70.0)
    folder = write_run(tmp_path, "res56_res20", "SLD", 0, 71.0, 71.0)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["SLKD"]["AMP"] = "bf16"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    report(tmp_path, echo=quiet)
    rows = read_csv(tmp_path / "summary.csv")
    assert (rows[("res56_res20", "KD")]["amp"], rows[("res56_res20", "SLD")]["amp"]) == ("none", "bf16")
    md = (tmp_path / "summary.md").read_text()
    assert "| data | AMP |" in md and "| CIFAR-100 | bf16 |" in md


def test_report_figures_are_images(written):
    written_files = report(written, echo=lambda line: None)
    for name in ("curves.png", "losses.png", "swaps.png"):
        assert written / name in written_files
        with Image.open(written / name) as image:
            image.verify()
            assert image.format == "PNG"


def test_report_without_sld_draws_no_swaps(tmp_path):
    write_run(tmp_path, "vgg13_vgg8", "KD", 0, 70.0, 69.0)
    files = report(tmp_path, echo=lambda line: None)
    assert not (tmp_path / "swaps.png").exists() and tmp_path / "curves.png" in files


def test_one_view_sld_and_smoke_runs_are_labelled(tmp_path):
    write_run(tmp_path / "smoke", "res56_res20", "SLD", 0, 1.0, 1.0, views=1, smoke=True)
    notes = []
    report(tmp_path, echo=notes.append)  # finds the smoke folder by itself
    row = read_csv(tmp_path / "smoke" / "summary.csv")[("res56_res20", "SLD")]
    assert (row["views"], row["data"]) == ("1", "synthetic (--smoke)")
    assert "smoke runs" in (tmp_path / "smoke" / "summary.md").read_text()
    assert any("smoke" in note for note in notes)


def test_report_without_matplotlib_says_how_to_install(written, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BenchError, match="pip install matplotlib"):
        report(written, echo=lambda line: None)
    assert (written / "summary.csv").is_file(), "the tables are written before the figures"


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "no run folders" in capsys.readouterr().err


def test_published_table_is_spec_section_6():
    assert {k: TOP1["res32x4_res8x4"][k] for k in ("KD", "DKD", "MLKD", "MLKD+LS")} == {"KD": 73.33, "DKD": 76.32, "MLKD": 77.08, "MLKD+LS": 78.28}
    assert set(TOP1) <= set(known_pairs())


# --------------------------------------------------------------------------- run states
def test_run_states_are_read_from_the_folder(tmp_path):
    assert planning.state(tmp_path / "absent") == planning.START
    done = write_run(tmp_path, "p", "KD", 0, 1.0, 1.0)
    assert planning.state(done) == planning.DONE
    half = write_run(tmp_path, "p", "KD", 1, 1.0, 1.0, done=1)
    assert planning.state(half) == planning.START, "no checkpoint to continue from"
    (half / "latest.prev").write_bytes(b"x")
    assert planning.state(half) == planning.RESUME
    (half / "summary.json").unlink()
    assert planning.state(half) == planning.RESUME, "the checkpoint records its epochs"
    (half / "latest.prev").unlink()
    assert planning.state(half) == planning.START, "no record of a finished epoch: start again"


def test_command_lines():
    smoke = command(Path("c.yaml"), 3, Options(smoke=True), resume=True)
    assert smoke[1:] == ["-m", "slkd.run.train", "--cfg", "c.yaml", "--seed", "3", "--device", "cpu", "--smoke", "--resume"]
    real = command(Path("c.yaml"), 0, Options(device="cuda", amp="bf16", synthetic=512), resume=False)
    assert real[1:] == ["-m", "slkd.run.train", "--cfg", "c.yaml", "--seed", "0", "--device", "cuda", "--synthetic", "512"], "--amp is SLKD.AMP in the config"
    assert "--device" not in command(Path("c.yaml"), 0, Options(), resume=False)


# --------------------------------------------------------------------------- the scheduler
# A stand-in for slkd-train: argv is the folder, what to do, then the command line slkd-bench
# built, which it records as slkd-train does (summary.json's data, smoke, device) when it finishes.
STAND_IN = """
import json, os, sys, time
folder, mode, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
print("gpu", os.environ.get("CUDA_VISIBLE_DEVICES"), "threads", os.environ.get("OMP_NUM_THREADS"))
time.sleep(60 if mode == "hang" else 0.3)
if mode == "fail":
    print("slkd-train: error: a stand-in failure", file=sys.stderr)
    sys.exit(3)
if mode == "ok":
    data = "synthetic " + argv[argv.index("--synthetic") + 1] if "--synthetic" in argv else "real"
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    record = {"data": data, "smoke": "--smoke" in argv, "device": device}
    open(os.path.join(folder, "summary.json"), "w").write(json.dumps(dict(record, best_acc=1.0, epochs_done=2, epochs=2)))
"""


@pytest.fixture
def stand_in(monkeypatch):
    """Runs start the stand-in instead of slkd-train; set ``modes[seed]`` (default "ok")."""
    modes = {}
    real = bench_run.command

    def stand_in_command(config_path, seed, options, resume):
        return [sys.executable, "-c", STAND_IN, str(config_path.parent), modes.get(seed, "ok")] + real(config_path, seed, options, resume)[3:]

    monkeypatch.setattr(bench_run, "command", stand_in_command)
    return modes


def stand_in_runs(tmp_path, seeds):
    """KD runs of a pair ``p`` (teacher ``t``, student ``s``) from a one-file config."""
    source = tmp_path / "src.yaml"
    source.write_text(yaml.safe_dump({"DISTILLER": {"TYPE": "KD", "TEACHER": "t", "STUDENT": "s"}, "SOLVER": {"LR": 0.05}}))
    pair = Pair("p", "t", "s")
    return [planning.Run(pair, "KD", seed, source, tmp_path, tmp_path / "p" / "KD" / f"seed{seed}") for seed in seeds]


def quiet(line):
    pass


def test_runs_spread_over_gpus_and_failures_do_not_stop_the_others(tmp_path, monkeypatch, stand_in):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    stand_in[1] = "fail"
    runs = stand_in_runs(tmp_path, range(4))
    outcomes = execute(runs, Options(parallel=2), echo=quiet)
    by_seed = {outcome.run.seed: outcome for outcome in outcomes}
    assert [by_seed[seed].ok for seed in range(4)] == [True, False, True, True]
    assert "exited 3" in by_seed[1].message and "a stand-in failure" in by_seed[1].message
    gpus = [(run.folder / LOG_NAME).read_text().split("gpu ")[1].split()[0] for run in runs]
    assert gpus[:2] == ["4", "7"] and set(gpus) == {"4", "7"}
    assert all((run.folder / LOG_NAME).read_text().startswith("=== slkd-bench ") for run in runs)


def test_parallel_cpu_runs_share_the_cores(tmp_path, monkeypatch, stand_in):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    runs = stand_in_runs(tmp_path, range(2))
    execute(runs, Options(parallel=2, device="cpu"), echo=quiet)
    assert f"gpu None threads {max(1, os.cpu_count() // 2)}" in (runs[0].folder / LOG_NAME).read_text()


def test_a_run_that_exits_0_without_finishing_is_a_failure(tmp_path, stand_in):
    stand_in[0] = "exit0"
    (outcome,) = execute(stand_in_runs(tmp_path, [0]), Options(device="cpu"), echo=quiet)
    assert not outcome.ok and "no summary.json" in outcome.message


def test_stopping_the_benchmark_stops_its_runs(tmp_path, stand_in):
    stand_in[0] = "hang"
    (run,) = stand_in_runs(tmp_path, [0])
    pids = []

    def interrupt_once_started(line):
        if ": start," in line:
            pids.append(int((run.folder / PID_NAME).read_text()))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute([run], Options(device="cpu"), echo=interrupt_once_started)
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # stopped and reaped
    assert not (run.folder / PID_NAME).exists()
    claim(run.folder).close()  # and the folder's claim given up


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the command line from /proc")
def test_a_run_still_running_from_a_killed_benchmark_is_left_alone(tmp_path, stand_in):
    (run,) = stand_in_runs(tmp_path, [0])
    run.folder.mkdir(parents=True)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "slkd.run.train"])
    while b"slkd.run.train" not in Path(f"/proc/{orphan.pid}/cmdline").read_bytes():
        time.sleep(0.05)  # until the new process has its command line
    try:
        (run.folder / PID_NAME).write_text(f"{orphan.pid}\n")
        (outcome,) = execute([run], Options(device="cpu"), echo=quiet)
        assert not outcome.ok and f"still running in process {orphan.pid}" in outcome.message
    finally:
        orphan.kill()
        orphan.wait()
    (run.folder / PID_NAME).write_text(f"{orphan.pid}\n")
    assert _running_pid(run.folder) is None, "a stale pid file is ignored"


# a second slkd-bench: it claims the folder as slkd-bench does, says so, and holds it
HOLDER = """
import sys, time
from pathlib import Path
from slkd.bench.run import claim
lock = claim(Path(sys.argv[1]))
print("claimed", flush=True)
time.sleep(60)
"""


def test_a_run_claimed_by_another_benchmark_is_left_alone_until_that_one_ends(tmp_path, stand_in):
    (run,) = stand_in_runs(tmp_path, [0])
    run.folder.mkdir(parents=True)
    (run.folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run.folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline() == "claimed\n"
        for options in (Options(device="cpu"), Options(device="cpu", dry_run=True)):
            (outcome,) = execute([run], options, echo=quiet)
            assert not outcome.ok and f"claimed by another slkd-bench (process {holder.pid})" in outcome.message
        assert sorted(path.name for path in run.folder.iterdir()) == ["bench.lock", "metrics.jsonl"], "nothing written or deleted"
        assert (run.folder / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    finally:
        holder.kill()
        holder.wait()
    (outcome,) = execute([run], Options(device="cpu"), echo=quiet)
    assert outcome.ok and outcome.action == planning.START, "a killed holder's claim ends with it"


def test_a_run_finished_meanwhile_is_skipped_when_its_turn_comes(tmp_path, stand_in):
    # as a second benchmark that planned the run while the first one was training it
    (run,) = stand_in_runs(tmp_path, [0])
    outcomes = execute([run, run], Options(device="cpu"), echo=quiet)
    assert [(outcome.action, outcome.ok) for outcome in outcomes] == [(planning.START, True), (planning.DONE, True)]
    assert (run.folder / LOG_NAME).read_text().count("=== slkd-bench ") == 1


def _half_done(folder):
    """As if killed after epoch 1 of 2 (the summary keeps what the trainer recorded)."""
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps(dict(summary, epochs_done=1)))
    (folder / "latest").write_bytes(b"checkpoint")


@pytest.mark.parametrize(
    "first, second, differing",
    [
        (Options(device="cpu", synthetic=512), Options(device="cpu"), "data"),
        (Options(device="cpu"), Options(device="cpu", amp="bf16"), "SLKD.AMP"),
        (Options(device="cpu", amp="bf16"), Options(device="cpu"), "SLKD.AMP"),
        (Options(device="cpu"), Options(device="cuda"), "device"),
    ],
)
@pytest.mark.parametrize("half_done", [False, True])
def test_a_run_with_other_run_options_is_neither_skipped_nor_resumed(tmp_path, stand_in, first, second, differing, half_done):
    (run,) = stand_in_runs(tmp_path, [0])
    (outcome,) = execute([run], first, echo=quiet)
    assert outcome.ok
    if half_done:
        _half_done(run.folder)
    (outcome,) = execute([run], second, echo=quiet)
    state = "half done" if half_done else "finished"
    assert not outcome.ok and f"{state} with other settings ({differing} differ" in outcome.message
    assert (run.folder / LOG_NAME).read_text().count("=== slkd-bench ") == 1
    (outcome,) = execute([run], first, echo=quiet)
    assert outcome.ok and outcome.action == (planning.RESUME if half_done else planning.DONE), "the same options go on"


def test_an_identical_rerun_with_a_tuple_override_skips_the_finished_run(tmp_path, stand_in):
    (run,) = stand_in_runs(tmp_path, [0])
    options = Options(device="cpu", overrides=tuple(parse_overrides([["SOLVER.LR_DECAY_STAGES", "(1, 2)"]])))
    assert execute([run], options, echo=quiet)[0].ok
    (outcome,) = execute([run], options, echo=quiet)
    assert outcome.ok and outcome.action == planning.DONE, outcome.message
    assert yaml.safe_load((run.folder / "bench_config.yaml").read_text())["SOLVER"]["LR_DECAY_STAGES"] == [1, 2]


def test_dry_run_writes_nothing(tmp_path, stand_in):
    (run,) = stand_in_runs(tmp_path, [0])
    lines = []
    (outcome,) = execute([run], Options(device="cpu", dry_run=True), echo=lines.append)
    assert outcome.ok and outcome.action == planning.START and not run.folder.exists()
    assert "would start" in lines[0] and "SLKD.AMP 'none'" in lines[1]


def test_run_options_are_read_from_what_the_trainer_recorded():
    assert recorded_options({"data": "synthetic 64", "smoke": True, "device": "cpu"}) == {"data": "smoke", "device": "cpu"}
    assert recorded_options({"data": "synthetic 512", "smoke": False, "device": "cuda"}) == {"data": "synthetic 512", "device": "cuda"}
    assert recorded_options({"data": "real", "device": "cpu"}) == {"data": "real", "device": "cpu"}
    assert recorded_options({"best_acc": 1.0}) == {} and recorded_options(None) == {}


def test_every_run_failing_is_said_instead_of_pointing_to_the_report(tmp_path, stand_in, capsys):
    stand_in[0] = "fail"
    runs = stand_in_runs(tmp_path, [0])
    assert _print_outcomes(execute(runs, Options(device="cpu"), echo=quiet), runs, dry_run=False) == 1
    out = capsys.readouterr().out
    assert "nothing to report" in out and "slkd-bench report" not in out


# --------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "KD,FOO"], "unknown method or variant 'FOO'; known: KD, DKD, CRD, MLKD, SLD, KD+swap,"),
        (["--methods", "DKD+swp"], "unknown method or variant 'DKD+swp': did you mean DKD+swap"),
        (["--methods", "SLD@3views"], "did you mean SLD@2views, SLD@1view"),
        (["--methods", "MLKD@1view"], "MLKD@1view: MLKD is two-view by construction"),
        (["--methods", "CRD", "--protocol", "1"], "CRD@1view: PROTOCOL.VIEWS applies to the logit methods KD, DKD, MLKD, SLD, not CRD"),
        (["--protocol", "3"], "--protocol takes 1, 2 or 1,2"),
        (["--ablation", "dkd"], "unknown ablation 'dkd'; known: sld"),
        (["--methods", "KD,DKD", "--baseline", "SLD"], "--baseline SLD is not among this benchmark's variants: KD, DKD"),
        (["--pair", "res32x4_res9x9"], "unknown pair res32x4_res9x9; known pairs: "),
        (["--seeds", "0,x"], "--seeds takes integers"),
        (["--parallel", "0"], "--parallel is 0"),
        (["--set", "LOG.PREFIX", "/tmp"], "--set LOG.PREFIX is not allowed"),
        (["--set", "EXPERIMENT.TAG", "mine"], "--set EXPERIMENT.TAG is not allowed"),
        (["--set", "SOLVER.LR_DECAY_STAGES", "{150, 180}"], "a set is not a config value"),
        (["--set", "SOLVER", "{'LR': 0.1}"], "a dict is not a config value"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    assert main(["run", "--dry-run"] + argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("slkd-bench: error: ") and message in err and "Traceback" not in err


def test_overrides_are_written_as_yaml_reads_them_back():
    (key, value), = parse_overrides([["SOLVER.LR_DECAY_STAGES", "(150, (180, 'a'))"]])
    assert value == [150, [180, "a"]]
    assert parse_overrides([["KD.TEMPERATURE", "4"], ["X.NAME", "not a literal"]]) == [("KD.TEMPERATURE", 4), ("X.NAME", "not a literal")]


def test_overriding_a_whole_node_is_refused(tmp_path):
    (run,) = stand_in_runs(tmp_path, [0])
    with pytest.raises(BenchError, match=r"^SOLVER is a config node, not a value: set its keys one by one, e.g. --set SOLVER.LR VALUE$"):
        run_config("KD", run.pair, run.source, prefix=tmp_path, seed=0, epochs=None, overrides=[("SOLVER", 0.1)])
    with pytest.raises(BenchError, match="SOLVER.LR is a value, not a config node"):
        run_config("KD", run.pair, run.source, prefix=tmp_path, seed=0, epochs=None, overrides=[("SOLVER.LR.X", 0.1)])


def test_amp_is_written_into_the_config(tmp_path):
    (run,) = stand_in_runs(tmp_path, [0])

    def amp(**asked):
        config, notes = run_config("KD", run.pair, run.source, prefix=tmp_path, seed=0, epochs=None, **asked)
        return config["SLKD"]["AMP"], notes[-1]

    assert amp(overrides=[]) == ("none", "SLKD.AMP 'none' (slkd's default)")
    assert amp(overrides=[("SLKD.AMP", "fp16")]) == ("fp16", "SLKD.AMP 'fp16' (the config's)")
    assert amp(overrides=[("SLKD.AMP", "fp16")], amp="bf16") == ("bf16", "SLKD.AMP 'bf16' (--amp)")


def test_a_bad_override_stops_the_benchmark_before_anything_starts(tmp_path, stand_in):
    runs = stand_in_runs(tmp_path, [0, 1])
    with pytest.raises(BenchError, match="SOLVER is a config node"):
        execute(runs, Options(device="cpu", overrides=(("SOLVER", 0.1),)), echo=quiet)
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- with mdistiller
SMOKE_PAIR = "res56_res20"  # resnet32x4's smoke runs take several times longer on 2 CPU cores


@pytest.fixture(scope="module")
def child_env(host, tmp_path_factory):
    """The environment the benchmark's subprocesses see (restored afterwards)."""
    root = str(Path(host.package.__file__).resolve().parents[1])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLKD_MDISTILLER_PATH", root)
        yield root


@pytest.fixture(scope="module")
def smoke_bench(child_env, tmp_path_factory):
    """The whole smoke benchmark: 5 methods x 2 seeds, 2 at a time."""
    out = tmp_path_factory.mktemp("bench")
    code = main(["run", "--smoke", "--pair", SMOKE_PAIR, "--methods", ",".join(METHODS), "--seeds", "0,1", "--out", str(out), "--parallel", "2"])
    return out, code


def _attempts(folder):
    return (folder / LOG_NAME).read_text().count("=== slkd-bench ")


@pytest.mark.host
@pytest.mark.slow
def test_smoke_benchmark_runs_and_reports(smoke_bench, capsys):
    out, code = smoke_bench
    assert code == 0
    root = out / "smoke"
    for method in METHODS:
        for seed in (0, 1):
            folder = root / SMOKE_PAIR / method / f"seed{seed}"
            summary = json.loads((folder / "summary.json").read_text())
            assert summary["epochs_done"] == summary["epochs"] == 2 and summary["seed"] == seed
            assert summary["method"] == method
            config = yaml.safe_load((folder / "config.yaml").read_text())
            assert (config["DISTILLER"]["TEACHER"], config["DISTILLER"]["STUDENT"]) == ("resnet56", "resnet20")
            assert "--seed" in (folder / "command.txt").read_text()
            assert _attempts(folder) == 1
    assert main(["report", str(out)]) == 0
    rows = read_csv(root / "summary.csv")
    assert [method for (_, method) in rows] == METHODS
    assert all(row["n"] == "2" and row["epochs"] == "2" and row["data"] == "synthetic (--smoke)" for row in rows.values())
    assert rows[(SMOKE_PAIR, "MLKD")]["views"] == "2" and rows[(SMOKE_PAIR, "CRD")]["views"] == "1"
    for name in ("summary.md", "curves.png", "losses.png", "swaps.png"):
        assert (root / name).is_file()
    for name in ("curves.png", "losses.png", "swaps.png"):
        with Image.open(root / name) as image:
            image.verify()
    mlkd_losses = json.loads((root / SMOKE_PAIR / "MLKD" / "seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss_ce", "loss_kd", "loss_cc", "loss_bc"} <= set(mlkd_losses)
    sld_line = json.loads((root / SMOKE_PAIR / "SLD" / "seed0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= sld_line["teacher_swap_rate"] <= 1 and 0 <= sld_line["student_swap_rate"] <= 1


@pytest.mark.host
@pytest.mark.slow
def test_rerun_skips_every_finished_run(smoke_bench, capsys):
    out, _ = smoke_bench
    capsys.readouterr()
    assert main(["run", "--smoke", "--pair", SMOKE_PAIR, "--seeds", "0,1", "--out", str(out)]) == 0
    assert "10 runs: 10 skipped (already done), 0 failed" in capsys.readouterr().out
    assert all(_attempts(folder) == 1 for folder in (out / "smoke" / SMOKE_PAIR).glob("*/seed*"))


@pytest.mark.host
@pytest.mark.slow
def test_rerun_with_other_settings_touches_nothing(smoke_bench, capsys):
    out, _ = smoke_bench
    assert main(["run", "--smoke", "--pair", SMOKE_PAIR, "--methods", "KD", "--seeds", "0", "--out", str(out), "--set", "KD.TEMPERATURE", "2"]) == 1
    err = capsys.readouterr().err
    assert "FAILED res56_res20 KD seed0: finished with other settings (KD.TEMPERATURE differ" in err
    assert _attempts(out / "smoke" / SMOKE_PAIR / "KD" / "seed0") == 1


@pytest.mark.host
@pytest.mark.slow
def test_rerun_starts_a_run_without_record_and_resumes_a_half_done_one(smoke_bench, capsys):
    out, _ = smoke_bench
    root = out / "smoke" / SMOKE_PAIR
    fresh, half = root / "KD" / "seed1", root / "SLD" / "seed0"
    for name in ("summary.json", "latest", "latest.prev"):  # as if killed before its first checkpoint
        (fresh / name).unlink()
    # as if killed after epoch 1: its checkpoint, summary and metrics
    os.replace(half / "latest.prev", half / "latest")
    summary = json.loads((half / "summary.json").read_text())
    (half / "summary.json").write_text(json.dumps(dict(summary, epochs_done=1)))
    (half / "metrics.jsonl").write_text((half / "metrics.jsonl").read_text().splitlines(keepends=True)[0])
    capsys.readouterr()
    assert main(["run", "--smoke", "--pair", SMOKE_PAIR, "--seeds", "0,1", "--out", str(out), "--parallel", "2"]) == 0
    printed = capsys.readouterr().out
    assert "10 runs: 8 skipped (already done), 1 started, 1 resumed, 0 failed" in printed
    assert _attempts(fresh) == 2 and _attempts(half) == 2
    log = (half / LOG_NAME).read_text()
    assert "resuming from" in log and log.split("=== slkd-bench ")[-1].splitlines()[0].endswith("--resume")
    for folder in (fresh, half):
        assert [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2]
        assert json.loads((folder / "summary.json").read_text())["epochs_done"] == 2
    others = [folder for folder in root.glob("*/seed*") if folder not in (fresh, half)]
    assert len(others) == 8 and all(_attempts(folder) == 1 for folder in others)


@pytest.mark.host
@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_others_finish(child_env, tmp_path, capsys):
    # an empty SLD.TEMPERATURES is refused by SLD only; KD runs with it
    code = main(["run", "--smoke", "--pair", SMOKE_PAIR, "--methods", "KD,SLD", "--seeds", "0", "--out", str(tmp_path), "--parallel", "2", "--set", "SLD.TEMPERATURES", "[]"])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 runs: 1 started, 1 failed" in captured.out
    failure = [line for line in captured.err.splitlines() if line.startswith("[slkd-bench] FAILED")]
    assert len(failure) == 1 and "res56_res20 SLD seed0" in failure[0] and "SLD.TEMPERATURES" in failure[0] and "empty" in failure[0]
    assert planning.is_complete(planning.read_summary(tmp_path / "smoke" / SMOKE_PAIR / "KD" / "seed0"))


@pytest.mark.host
def test_res32x4_res8x4_plan_uses_the_hosts_and_slkds_configs(child_env, tmp_path):
    host_root = Path(child_env)
    pair = known_pairs()["res32x4_res8x4"]
    runs = planning.plan([pair], METHODS, [0, 1, 2], tmp_path, host_root, smoke=False)
    assert len(runs) == 15
    sources = {run.method: run.source for run in runs}
    assert sources == {
        "KD": host_root / "configs/cifar100/kd.yaml",
        "DKD": host_root / "configs/cifar100/dkd/res32x4_res8x4.yaml",
        "CRD": host_root / "configs/cifar100/crd.yaml",
        "MLKD": ROOT / "mdistiller_configs/cifar100/mlkd/res32x4_res8x4.yaml",
        "SLD": ROOT / "mdistiller_configs/cifar100/sld/res32x4_res8x4.yaml",
    }
    assert runs[4].folder == tmp_path.resolve() / "res32x4_res8x4" / "DKD" / "seed1"
    for run in runs:
        config, _ = run_config(run.method, pair, run.source, prefix=run.prefix, seed=run.seed, epochs=None, overrides=[])
        original = yaml.safe_load(run.source.read_text())
        assert config["SOLVER"] == original["SOLVER"], "the host's own settings for its own pair"
        assert config["DISTILLER"] == original["DISTILLER"]
        assert config["LOG"]["PREFIX"] == str(tmp_path.resolve())
        assert (config["EXPERIMENT"]["PROJECT"], config["EXPERIMENT"]["NAME"]) == (f"res32x4_res8x4/{run.method}", f"seed{run.seed}")


@pytest.mark.host
def test_kd_and_crd_follow_mdistillers_per_pair_convention(child_env, tmp_path):
    host_root = Path(child_env)
    pairs = known_pairs()
    shuffle = pairs["res32x4_shuv1"]
    source = host_root / "configs/cifar100/crd.yaml"
    config, notes = run_config("CRD", shuffle, source, prefix=tmp_path, seed=0, epochs=10, overrides=[("SOLVER.LR", 0.2)])
    assert config["DISTILLER"]["TEACHER"] == "resnet32x4" and config["DISTILLER"]["STUDENT"] == "ShuffleV1"
    assert config["SOLVER"]["LR"] == 0.2 and config["SOLVER"]["EPOCHS"] == 10, "overrides come last"
    assert config["CRD"]["FEAT"] == {"TEACHER_DIM": 256, "STUDENT_DIM": 960}
    assert any("per-pair convention" in note for note in notes)
    for dkd in sorted((host_root / "configs/cifar100/dkd").glob("*.yaml")):
        if dkd.stem in pairs:
            assert mdistiller_lr(pairs[dkd.stem].student) == yaml.safe_load(dkd.read_text())["SOLVER"]["LR"], dkd.name


@pytest.mark.host
def test_overriding_a_whole_node_is_a_one_line_error(child_env, tmp_path, capsys):
    assert main(["run", "--dry-run", "--pair", SMOKE_PAIR, "--methods", "KD", "--out", str(tmp_path), "--set", "SOLVER", "0.1"]) == 1
    err = capsys.readouterr().err
    assert err == "slkd-bench: error: SOLVER is a config node, not a value: set its keys one by one, e.g. --set SOLVER.BATCH_SIZE VALUE\n"


@pytest.mark.host
def test_dkd_on_a_pair_without_a_host_config_is_a_clear_error(child_env, tmp_path, capsys):
    assert main(["run", "--dry-run", "--pair", "wrn40_2_vgg8", "--methods", "DKD", "--out", str(tmp_path)]) == 1
    assert "mdistiller ships no DKD config for wrn40_2_vgg8" in capsys.readouterr().err
