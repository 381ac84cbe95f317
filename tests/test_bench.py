"""slkd-bench: planning, running, resuming and reporting.

Without mdistiller: the report on hand-written run folders (numbers checked exactly), the
run states, the scheduler (GPU spreading, failures) with stand-in commands, and the CLI's
errors. With mdistiller (``host`` fixture): the whole benchmark with ``--smoke`` on a CPU,
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
from slkd.bench.cli import main
from slkd.bench.configs import mdistiller_lr, run_config
from slkd.bench.published import TOP1
from slkd.bench.report import report
from slkd.bench.run import LOG_NAME, PID_NAME, Options, _Job, _launch_all, _running_pid, command, execute
from slkd.bench.sources import BenchError, Pair, known_pairs

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["KD", "DKD", "CRD", "MLKD", "SLD"]


# --------------------------------------------------------------------------- hand-written runs
def write_run(root, pair, method, seed, best, last, *, epochs=3, done=None, views_off=False, memory=None, seconds=(2.0, 4.0), smoke=False):
    """A run folder as slkd's trainer leaves it, with the numbers given."""
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
    summary = {"best_acc": best, "last_acc": last, "epochs_done": done, "epochs": epochs, "seed": seed, "method": method}
    (folder / "summary.json").write_text(json.dumps(summary))
    config = {"DISTILLER": {"TYPE": method}, "DATASET": {"TYPE": "cifar100"}, "SLD": {"STRONG_VIEW": not views_off, "GAMMA": 2}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "command.txt").write_text("slkd-train --cfg x.yaml" + (" --smoke" if smoke else "") + "\n")
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
    assert rows[("res32x4_shuv1", "DKD")]["published"] == "", "SPEC section 6 has no res32x4_shuv1 row"
    md = (written / "summary.md").read_text()
    lines = {line.split(" | ")[1]: line for line in md.splitlines() if line.startswith("| res32x4_res8x4 |")}
    assert lines["KD"].rstrip().endswith("| 73.33 |")
    assert lines["MLKD"].rstrip().endswith("| 77.08 |")
    assert lines["SLD"].rstrip().endswith("|  |")
    assert "78.28" in md and "MLKD+LS" in md, "MLKD+LS is named in a note, not run"


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
    write_run(tmp_path / "smoke", "res56_res20", "SLD", 0, 1.0, 1.0, views_off=True, smoke=True)
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
    assert TOP1["res32x4_res8x4"] == {"KD": 73.33, "DKD": 76.32, "MLKD": 77.08, "MLKD+LS": 78.28}
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
    assert planning.state(half) == planning.START, "no record of a finished epoch: start again"


def test_command_lines():
    smoke = command(Path("c.yaml"), 3, Options(smoke=True), resume=True)
    assert smoke[1:] == ["-m", "slkd.run.train", "--cfg", "c.yaml", "--seed", "3", "--device", "cpu", "--smoke", "--resume"]
    real = command(Path("c.yaml"), 0, Options(device="cuda", amp="bf16"), resume=False)
    assert real[1:] == ["-m", "slkd.run.train", "--cfg", "c.yaml", "--seed", "0", "--device", "cuda", "--amp", "bf16"]
    assert "--device" not in command(Path("c.yaml"), 0, Options(), resume=False)


# --------------------------------------------------------------------------- the scheduler
STAND_IN = """
import json, os, sys, time
folder = sys.argv[1]
print("gpu", os.environ.get("CUDA_VISIBLE_DEVICES"), "threads", os.environ.get("OMP_NUM_THREADS"))
time.sleep(0.3)
if sys.argv[2] == "fail":
    print("slkd-train: error: a stand-in failure", file=sys.stderr)
    sys.exit(3)
open(os.path.join(folder, "summary.json"), "w").write(json.dumps({"best_acc": 1.0, "epochs_done": 2, "epochs": 2}))
"""


def stand_in_jobs(tmp_path, outcomes):
    pair = Pair("p", "t", "s")
    jobs = []
    for seed, outcome in enumerate(outcomes):
        folder = tmp_path / "p" / "KD" / f"seed{seed}"
        run = planning.Run(pair, "KD", seed, Path("src.yaml"), tmp_path, folder)
        jobs.append(_Job(run, planning.START, [sys.executable, "-c", STAND_IN, str(folder), outcome]))
    return jobs


def test_runs_spread_over_gpus_and_failures_do_not_stop_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    jobs = stand_in_jobs(tmp_path, ["ok", "fail", "ok", "ok"])
    outcomes = _launch_all(jobs, Options(parallel=2), echo=lambda line: None)
    by_seed = {outcome.run.seed: outcome for outcome in outcomes}
    assert [by_seed[seed].ok for seed in range(4)] == [True, False, True, True]
    assert "exited 3" in by_seed[1].message and "a stand-in failure" in by_seed[1].message
    gpus = [(job.run.folder / LOG_NAME).read_text().split("gpu ")[1].split()[0] for job in jobs]
    assert gpus[:2] == ["4", "7"] and set(gpus) == {"4", "7"}
    assert all((job.run.folder / LOG_NAME).read_text().startswith("=== slkd-bench ") for job in jobs)


def test_parallel_cpu_runs_share_the_cores(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    jobs = stand_in_jobs(tmp_path, ["ok", "ok"])
    _launch_all(jobs, Options(parallel=2, device="cpu"), echo=lambda line: None)
    log = (jobs[0].run.folder / LOG_NAME).read_text()
    assert f"gpu None threads {max(1, os.cpu_count() // 2)}" in log


def test_a_run_that_exits_0_without_finishing_is_a_failure(tmp_path):
    job = stand_in_jobs(tmp_path, ["ok"])[0]
    job.command = [sys.executable, "-c", "pass"]
    (outcome,) = _launch_all([job], Options(device="cpu"), echo=lambda line: None)
    assert not outcome.ok and "no summary.json" in outcome.message


def test_stopping_the_benchmark_stops_its_runs(tmp_path):
    job = stand_in_jobs(tmp_path, ["ok"])[0]
    job.command = [sys.executable, "-c", "import time; time.sleep(60)"]

    def interrupt_once_started(line):
        if "start" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _launch_all([job], Options(device="cpu"), echo=interrupt_once_started)
    assert job.process.poll() is not None
    assert not (job.run.folder / PID_NAME).exists()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the command line from /proc")
def test_a_run_still_running_from_a_killed_benchmark_is_left_alone(tmp_path):
    (run,) = [job.run for job in stand_in_jobs(tmp_path, ["ok"])]
    run.folder.mkdir(parents=True)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "slkd.run.train"])
    while b"slkd.run.train" not in Path(f"/proc/{orphan.pid}/cmdline").read_bytes():
        time.sleep(0.05)  # until the new process has its command line
    try:
        (run.folder / PID_NAME).write_text(f"{orphan.pid}\n")
        (outcome,) = execute([run], Options(device="cpu"), echo=lambda line: None)
        assert not outcome.ok and f"still running in process {orphan.pid}" in outcome.message
    finally:
        orphan.kill()
        orphan.wait()
    (run.folder / PID_NAME).write_text(f"{orphan.pid}\n")
    assert _running_pid(run.folder) is None, "a stale pid file is ignored"


# --------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "KD,FOO"], "unknown method FOO; known methods: KD, DKD, CRD, MLKD, SLD"),
        (["--pair", "res32x4_res9x9"], "unknown pair res32x4_res9x9; known pairs: "),
        (["--seeds", "0,x"], "--seeds takes integers"),
        (["--parallel", "0"], "--parallel is 0"),
        (["--set", "LOG.PREFIX", "/tmp"], "--set LOG.PREFIX is not allowed"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    assert main(["run", "--dry-run"] + argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("slkd-bench: error: ") and message in err and "Traceback" not in err


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
    (fresh / "summary.json").unlink()
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
def test_dkd_on_a_pair_without_a_host_config_is_a_clear_error(child_env, tmp_path, capsys):
    assert main(["run", "--dry-run", "--pair", "wrn40_2_vgg8", "--methods", "DKD", "--out", str(tmp_path)]) == 1
    assert "mdistiller ships no DKD config for wrn40_2_vgg8" in capsys.readouterr().err
