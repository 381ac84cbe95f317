"""slkd-train (slkd.run.train.main): the smoke run, resuming, and the one-line errors.

``main`` returns 0 after training and 1 after a known error, which it prints as one
``slkd-train: error: ...`` line on stderr (no traceback). Everything that imports mdistiller
takes the ``host`` fixture; the run without mdistiller happens in a subprocess in which
``mdistiller`` is blocked (see tests/test_host_registry.py).
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[1] / "mdistiller_configs"
RES8X4 = str(CONFIGS / "cifar100" / "sld" / "res32x4_res8x4.yaml")
SMOKE = ["--cfg", RES8X4, "--smoke", "--device", "cpu"]
RUN_FOLDER = Path("output") / "smoke" / "slkd_cifar100" / "sld,resnet32x4,resnet8x4"


def _main(argv):
    from slkd.run.train import main

    return main(list(argv))


def _one_line_error(capsys, code):
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("slkd-train: error:")]
    assert len(lines) == 1, captured.err
    return lines[0]


# --------------------------------------------------------------------------- the smoke run
@pytest.fixture(scope="module")
def smoke_run(host, tmp_path_factory):
    """One smoke run in a fresh working directory; yields (folder, exit code, stdout)."""
    workdir = tmp_path_factory.mktemp("smoke")
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        from contextlib import redirect_stdout
        from io import StringIO

        out = StringIO()
        with redirect_stdout(out):
            code = _main(SMOKE)
        yield workdir, code, out.getvalue()
    finally:
        os.chdir(previous)


@pytest.mark.host
def test_smoke_run_succeeds(smoke_run):
    workdir, code, out = smoke_run
    assert code == 0, out
    assert "[slkd] best test top-1:" in out
    assert "epoch 1/2" in out and "epoch 2/2" in out
    assert (workdir / RUN_FOLDER).is_dir()
    assert [p for p in (workdir / "output").iterdir()] == [workdir / "output" / "smoke"]


@pytest.mark.host
def test_smoke_run_folder_holds_the_records(smoke_run):
    workdir, code, _ = smoke_run
    folder = workdir / RUN_FOLDER
    for name in ("config.yaml", "command.txt", "environment.json", "metrics.jsonl", "summary.json", "latest", "student_latest"):
        assert (folder / name).is_file(), f"{name} missing from {sorted(p.name for p in folder.iterdir())}"

    import yaml

    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["DISTILLER"]["TYPE"] == "SLD"
    assert config["SOLVER"]["EPOCHS"] == 2
    assert config["SLD"]["GAMMA"] == 1  # the second smoke epoch is past GAMMA
    command = (folder / "command.txt").read_text()
    assert command.startswith("slkd-train") and "--smoke" in command and RES8X4 in command
    environment = json.loads((folder / "environment.json").read_text())
    for key in ("python", "torch", "slkd", "host"):
        assert key in environment
    assert environment["host"]["package"] == "mdistiller"


@pytest.mark.host
def test_smoke_run_metrics(smoke_run):
    workdir, _, _ = smoke_run
    folder = workdir / RUN_FOLDER
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        for key in ("loss_ce", "loss_kd", "teacher_swap_rate", "test_acc"):
            assert key in line, f"{key} not in {sorted(line)}"
            assert math.isfinite(line[key])
        assert 0.0 <= line["teacher_swap_rate"] <= 1.0
        assert 0.0 <= line["test_acc"] <= 100.0
        assert line["loss_kd"] > 0 and line["loss_ce"] > 0
    if "sld_student_term" in lines[0]:  # the pseudo-teacher term is off in epoch 1, on in 2
        assert lines[0]["sld_student_term"] == 0.0
        assert lines[1]["sld_student_term"] > 0.0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["epochs_done"] == 2 and summary["epochs"] == 2
    assert summary["method"] == "SLD"
    assert (summary["teacher"], summary["student"]) == ("resnet32x4", "resnet8x4")
    assert summary["last_acc"] == lines[-1]["test_acc"]
    assert summary["best_acc"] == max(line["test_acc"] for line in lines)
    assert "seed" in summary
    assert (summary["views"], summary["data"], summary["smoke"], summary["device"]) == (2, "synthetic 16", True, "cpu")


@pytest.mark.host
def test_smoke_run_checkpoints_load(smoke_run):
    workdir, _, _ = smoke_run
    folder = workdir / RUN_FOLDER
    latest = torch.load(folder / "latest", map_location="cpu", weights_only=False)
    assert latest["epoch"] == 2
    assert any(key.startswith("student.") for key in latest["model"])
    student = torch.load(folder / "student_latest", map_location="cpu", weights_only=False)
    assert "model" in student and not any(key.startswith("student.") for key in student["model"])


def _resume_in(workdir, capsys):
    """``slkd-train <smoke> --resume`` run in ``workdir``; its captured output (exit 0 asserted)."""
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        capsys.readouterr()
        code = _main(SMOKE + ["--resume"])
    finally:
        os.chdir(previous)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


@pytest.mark.host
def test_resume_continues_an_interrupted_run(smoke_run, capsys):
    """Make the finished smoke run look interrupted after epoch 1 (its ``latest.prev`` is the
    epoch-1 checkpoint), then --resume: it says so, trains epoch 2 again and only epoch 2."""
    workdir, code, _ = smoke_run
    assert code == 0
    folder = workdir / RUN_FOLDER
    original = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    copy_dir = workdir.parent / (workdir.name + "_resume")
    shutil.copytree(workdir, copy_dir)
    folder = copy_dir / RUN_FOLDER
    assert torch.load(folder / "latest.prev", map_location="cpu", weights_only=False)["epoch"] == 1
    shutil.copyfile(folder / "latest.prev", folder / "latest")
    captured = _resume_in(copy_dir, capsys)
    assert "resuming from" in captured.out and "after epoch 1" in captured.out
    assert "epoch 1/2" not in captured.out and "epoch 2/2" in captured.out
    resumed = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in resumed] == [1, 2]
    assert resumed[0] == original[0]
    # epoch 2 replays from the same weights, optimizer and seeds: the same numbers
    for key in ("loss_ce", "loss_kd", "teacher_swap_rate", "test_acc"):
        assert resumed[1][key] == pytest.approx(original[1][key], rel=1e-4, abs=1e-6), key
    assert torch.load(folder / "latest", map_location="cpu", weights_only=False)["epoch"] == 2


@pytest.mark.host
def test_resume_of_a_finished_run_has_nothing_to_do(smoke_run, capsys):
    workdir, code, _ = smoke_run
    assert code == 0
    captured = _resume_in(workdir, capsys)
    assert "resuming from" in captured.out and "after epoch 2" in captured.out
    assert "epoch 2/2" not in captured.out
    lines = (workdir / RUN_FOLDER / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


@pytest.mark.host
def test_a_second_smoke_run_replaces_the_first_and_a_synthetic_run_is_not_overwritten(host, in_tmp, capsys):
    """A smoke run's folder is disposable; any other run's checkpoints are kept from a fresh
    start that would write over them."""
    assert _main(SMOKE) == 0
    first = (RUN_FOLDER / "environment.json").stat().st_mtime_ns
    assert _main(SMOKE) == 0
    assert (RUN_FOLDER / "environment.json").stat().st_mtime_ns != first
    assert len((RUN_FOLDER / "metrics.jsonl").read_text().splitlines()) == 2
    synthetic = ["--cfg", RES8X4, "--synthetic", "16", "--device", "cpu", "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "8", "DATASET.TEST.BATCH_SIZE", "8", "SLKD.LOADER.WORKERS", "0"]
    assert _main(synthetic) == 0
    capsys.readouterr()
    line = _one_line_error(capsys, _main(synthetic))
    assert "holds the checkpoints of an earlier run: continue it with --resume" in line


# --------------------------------------------------------------------------- errors
@pytest.mark.host
def test_resume_without_a_run_folder(host, in_tmp, capsys):
    line = _one_line_error(capsys, _main(SMOKE + ["--resume"]))
    assert "--resume found no usable checkpoint" in line
    assert str(RUN_FOLDER) in line or RUN_FOLDER.name in line
    assert "Start without --resume" in line
    assert not Path("output").exists(), "a failed --resume must not leave an empty run folder"


@pytest.mark.host
def test_cuda_without_gpu(host, in_tmp, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: --device cuda is valid here")
    line = _one_line_error(capsys, _main(["--cfg", RES8X4, "--smoke", "--device", "cuda"]))
    assert "--device cuda" in line and "--device cpu" in line
    assert not Path("output").exists()


@pytest.mark.host
def test_unknown_teacher_lists_known_models(host, in_tmp, capsys):
    line = _one_line_error(capsys, _main(SMOKE + ["DISTILLER.TEACHER", "resnet999"]))
    assert "DISTILLER.TEACHER 'resnet999'" in line
    assert "known:" in line
    for name in ("resnet32x4", "resnet56", "wrn_40_2", "vgg13", "ShuffleV1"):
        assert name in line


@pytest.mark.host
def test_config_typo_is_one_line(host, in_tmp, capsys):
    line = _one_line_error(capsys, _main(SMOKE + ["SLD.GAMA", "100"]))
    assert "SLD.GAMA" in line and "SLD.GAMMA" in line


@pytest.mark.host
def test_missing_teacher_checkpoint(host, in_tmp, capsys, monkeypatch):
    """A real (non-smoke) run whose teacher checkpoint is not in the download folder.

    CIFAR-100 is replaced by synthetic sets (what is tested is the teacher check, which
    comes after the data), and the host's table entry for resnet32x4 points into an empty
    temporary download folder instead of the checkout's download_ckpts/.
    """
    import slkd.run.train as train
    from slkd.host import data

    def synthetic(host, cfg, smoke):
        train_set, test_set = data.synthetic_cifar100_sets(8, 8)
        return train_set, test_set, 100

    monkeypatch.setattr(train, "datasets", synthetic)
    missing = in_tmp / "download_ckpts" / "cifar_teachers" / "resnet32x4_vanilla" / "ckpt_epoch_240.pth"
    constructor, _ = host.cifar_model_dict["resnet32x4"]
    monkeypatch.setitem(host.cifar_model_dict, "resnet32x4", (constructor, str(missing)))
    line = _one_line_error(capsys, _main(["--cfg", RES8X4, "--device", "cpu"]))
    assert str(missing) in line
    assert "slkd-fetch teachers" in line
    assert "resnet32x4" in line


@pytest.mark.host
def test_missing_cifar100(host, in_tmp, capsys, monkeypatch):
    """A real (non-smoke) run without CIFAR-100. The data check is pointed at an empty
    folder (the host checkout might hold the real data), and the host's dataset builder is
    replaced by one that fails the test, so nothing is ever downloaded."""
    from slkd.host import data

    empty_root = in_tmp / "data"
    check = data.check_dataset_files
    seen = []

    def check_in_empty_root(cfg, data_root):
        seen.append(data_root)
        return check(cfg, str(empty_root))

    def must_not_be_called(cfg):
        raise AssertionError("the dataset check should have stopped the run")

    monkeypatch.setattr(data, "check_dataset_files", check_in_empty_root)
    import mdistiller.dataset

    monkeypatch.setattr(mdistiller.dataset, "get_dataset", must_not_be_called)
    line = _one_line_error(capsys, _main(["--cfg", RES8X4, "--device", "cpu"]))
    assert seen and Path(seen[0]) == Path(host.package.__file__).resolve().parents[1] / "data"
    assert str(empty_root / "cifar-100-python") in line
    assert "slkd-fetch cifar100" in line


# --------------------------------------------------------------------------- without a host
def test_without_mdistiller_says_how_to_install(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['mdistiller'] = None  # as if it were not installed\n"
        "from slkd.run.train import main\n"
        f"sys.exit(main(['--cfg', {RES8X4!r}, '--smoke', '--device', 'cpu']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SLKD_MDISTILLER_PATH", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("slkd-train: error: slkd needs mdistiller")
    assert "git clone" in result.stderr and "SLKD_MDISTILLER_PATH" in result.stderr
    assert not (tmp_path / "output").exists()


@pytest.mark.host
def test_one_seed_gives_identical_losses_and_another_seed_does_not(host, in_tmp, capsys):
    """slkd-train seeds the networks' initial weights, the data order and the augmentations."""
    small = ["--cfg", str(CONFIGS / "cifar100" / "sld" / "res56_res20.yaml"), "--smoke", "--device", "cpu"]
    losses = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert _main(small + ["--seed", str(seed), "LOG.PREFIX", name]) == 0
        lines = (Path(name) / "smoke" / "slkd_cifar100" / "sld,resnet56,resnet20" / "metrics.jsonl").read_text().splitlines()
        losses[name] = [[json.loads(line)[key] for key in ("loss_ce", "loss_kd", "test_loss")] for line in lines]
    assert losses["a"] == losses["b"]
    assert losses["a"] != losses["c"]


@pytest.mark.host
def test_deterministic_runs_repeat_exactly_with_loader_workers(host, in_tmp):
    """--deterministic: torch's deterministic algorithms, seeded loader workers (in a
    subprocess: the setting is global to the process)."""
    config = str(CONFIGS / "cifar100" / "sld" / "res56_res20.yaml")
    losses = []
    for name in ("a", "b"):
        command = [sys.executable, "-m", "slkd.run.train", "--cfg", config, "--smoke", "--device", "cpu",
                   "--deterministic", "SLKD.LOADER.WORKERS", "2", "LOG.PREFIX", name]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        metrics = next(Path(name).rglob("metrics.jsonl")).read_text().splitlines()
        config_dump = next(Path(name).rglob("config.yaml")).read_text()
        assert "DETERMINISTIC: true" in config_dump
        losses.append([[json.loads(line)[key] for key in ("loss_ce", "loss_kd", "test_loss")] for line in metrics])
    assert losses[0] == losses[1]


@pytest.mark.host
def test_fused_loss_run_matches_the_eager_run(host, in_tmp, capsys):
    """--fused-loss (Triton's CPU interpreter here, compiled on a GPU) trains the same run as
    the eager loss, to float rounding, and records SLKD.FUSED_LOSS in config.yaml."""
    small = ["--cfg", str(CONFIGS / "cifar100" / "sld" / "res56_res20.yaml"), "--smoke", "--device", "cpu"]
    metrics = {}
    for name, extra in (("eager", []), ("fused", ["--fused-loss"])):
        assert _main(small + extra + ["LOG.PREFIX", name]) == 0
        metrics[name] = [json.loads(line) for line in next(Path(name).rglob("metrics.jsonl")).read_text().splitlines()]
    assert "FUSED_LOSS: true" in next(Path("fused").rglob("config.yaml")).read_text()
    for eager, fused in zip(metrics["eager"], metrics["fused"], strict=True):
        for key in ("loss_ce", "loss_kd", "sld_teacher_term", "sld_student_term", "teacher_swap_rate", "test_loss"):
            assert fused[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-6), key
    assert metrics["fused"][1]["sld_student_term"] > 0  # the pseudo-teacher term ran fused too


@pytest.mark.host
def test_device_views_run_trains_the_pil_run(host, in_tmp, capsys, monkeypatch):
    """--device-views: a smoke run (SLD, BatchNorm, the pseudo-teacher on at epoch 2) gives the
    PIL path's metrics to the bit, and config.yaml records SLKD.DEVICE_VIEWS."""
    from slkd.host.device_views import DeviceViews

    made = []
    make = DeviceViews.make
    monkeypatch.setattr(DeviceViews, "make", lambda self, draws: made.append(draws.size) or make(self, draws))
    small = ["--cfg", str(CONFIGS / "cifar100" / "sld" / "res56_res20.yaml"), "--smoke", "--device", "cpu"]
    metrics = {}
    for name, extra in (("pil", []), ("device", ["--device-views"])):
        assert _main(small + extra + ["LOG.PREFIX", name]) == 0
        metrics[name] = [json.loads(line) for line in next(Path(name).rglob("metrics.jsonl")).read_text().splitlines()]
        assert (len(made) > 0) == (name == "device")
    assert "DEVICE_VIEWS: true" in next(Path("device").rglob("config.yaml")).read_text()
    keys = ("loss_ce", "loss_kd", "train_acc", "test_loss", "test_acc")
    assert [[row[key] for key in keys] for row in metrics["device"]] == [[row[key] for key in keys] for row in metrics["pil"]]
    assert len(metrics["device"]) == 2 and all(math.isfinite(row["loss_kd"]) for row in metrics["device"])


@pytest.mark.host
def test_fused_loss_without_a_gpu_is_one_line(host, in_tmp):
    """Outside Triton's interpreter the fused loss needs CUDA: one line naming the fix (in a
    subprocess: the interpreter is chosen when slkd.losses.sld_fused is imported)."""
    command = [sys.executable, "-m", "slkd.run.train", *SMOKE, "--fused-loss"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ, TRITON_INTERPRET="0"))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("slkd-train: error: SLKD.FUSED_LOSS runs on CUDA devices")
    assert "--fused-loss" in result.stderr
    assert not Path("output").exists()


@pytest.mark.host
def test_cuda_graphs_without_a_gpu_is_one_line(host, in_tmp, capsys):
    line = _one_line_error(capsys, _main(SMOKE + ["--cuda-graphs"]))
    assert "SLKD.CUDA_GRAPHS records CUDA graphs, this run is on cpu" in line and "--cuda-graphs" in line
    assert not Path("output").exists()


# --------------------------------------------------------------------------- SOLVER.TRAINER
@pytest.mark.host
@pytest.mark.parametrize("trainer", ["dot", "crd_dot"])
def test_dot_trainers_are_refused_not_replaced(host, in_tmp, capsys, trainer):
    """DOT's trainers bring their own optimizer (SOLVER.DOT.DELTA): slkd's trainer would
    silently train plain KD in their place."""
    line = _one_line_error(capsys, _main(SMOKE + ["SOLVER.TRAINER", trainer]))
    assert f"SOLVER.TRAINER {trainer!r}" in line and "SOLVER.DOT.DELTA" in line
    assert "mdistiller's own tools/train.py" in line
    assert not Path("output").exists()


@pytest.mark.host
def test_unknown_trainer_is_refused(host, in_tmp, capsys):
    line = _one_line_error(capsys, _main(SMOKE + ["SOLVER.TRAINER", "aug"]))
    assert "SOLVER.TRAINER 'aug'" in line and "slkd" in line and "tools/train.py" in line


@pytest.mark.host
@pytest.mark.parametrize("flag", [["--smoke"], ["--synthetic", "512"]], ids=["smoke", "synthetic"])
def test_synthetic_data_is_refused_for_an_imagenet_config(host, in_tmp, capsys, flag):
    """The synthetic sets are CIFAR-100-shaped: an ImageNet model would fail deep in its
    pooling on 32 x 32 images."""
    imagenet = str(CONFIGS / "imagenet" / "r34_r18" / "sld.yaml")
    line = _one_line_error(capsys, _main(["--cfg", imagenet, "--device", "cpu", *flag]))
    assert f"{flag[0]} makes CIFAR-100-shaped data" in line and "imagenet" in line and "CIFAR-100 config" in line


@pytest.mark.host
@pytest.mark.parametrize("overrides, flag, logs", [([], [], False), (["LOG.WANDB", "True"], [], True), ([], ["--wandb"], True), (["LOG.WANDB", "False"], [], False)])
def test_weights_and_biases_logs_when_asked_by_flag_or_override(host, overrides, flag, logs):
    """mdistiller's default (LOG.WANDB True) is not followed; an explicit override is."""
    from slkd.run.train import build_config, parse_args

    assert build_config(parse_args(["--cfg", RES8X4, *flag, *overrides]), host.cfg).LOG.WANDB is logs


@pytest.mark.host
@pytest.mark.parametrize("trainer", ["base", "crd", "ours"])
def test_loop_only_trainers_are_replaced_by_slkds(host, capsys, trainer):
    from slkd.run.train import build_config, parse_args

    args = parse_args(["--cfg", RES8X4, "SOLVER.TRAINER", trainer, "PROTOCOL.VIEWS", "1"])
    assert build_config(args, host.cfg).SOLVER.TRAINER == "slkd"
    assert f"SOLVER.TRAINER {trainer!r} -> 'slkd'" in capsys.readouterr().out


@pytest.mark.mlkd_fork
def test_the_forks_ours_config_feeds_its_distiller_two_views(mlkd_fork_host, in_tmp, capsys):
    """The MLKD fork's KD_ours takes (image_weak, image_strong) from the fork's ``ours``
    trainer; slkd's trainer in its place must feed it two views too."""
    config = Path(mlkd_fork_host.package.__file__).resolve().parents[1] / "configs" / "cifar100" / "ours" / "res56_res20.yaml"
    assert "KD_ours" in mlkd_fork_host.distiller_dict and config.is_file()
    code = _main(["--cfg", str(config), "--smoke", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "epoch 2/2" in captured.out
    summary = json.loads(next(Path("output").rglob("summary.json")).read_text())
    assert summary["views"] == 2


# --------------------------------------------------------------------------- bad numbers, late flags
@pytest.mark.host
@pytest.mark.parametrize(
    "override, fragment",
    [
        (["LOG.SAVE_CHECKPOINT_FREQ", "0"], "LOG.SAVE_CHECKPOINT_FREQ is 0: it must be an integer >= 1"),
        (["SOLVER.EPOCHS", "0"], "SOLVER.EPOCHS is 0: it must be an integer >= 1"),  # before --smoke sets 2
        (["SLKD.LOADER.WORKERS", "-2"], "SLKD.LOADER.WORKERS is -2: it must be an integer >= -1"),
        (["SOLVER.LR_DECAY_STAGES", "[1, 'a']"], "SOLVER.LR_DECAY_STAGES is [1, 'a']"),
    ],
)
def test_bad_number_is_one_line_before_anything_runs(host, in_tmp, capsys, override, fragment):
    line = _one_line_error(capsys, _main(SMOKE + override))
    assert fragment in line
    assert not Path("output").exists()


@pytest.mark.parametrize("flag", [["--amp", "bf16"], ["--cuda-graphs"], ["--seed=3"]])
def test_flag_after_the_overrides_says_where_flags_go(in_tmp, capsys, flag):
    line = _one_line_error(capsys, _main(SMOKE + ["SLD.GAMMA", "100", *flag]))
    assert f"{flag[0]} comes after the KEY VALUE overrides: put flags before them" in line


def test_negative_override_value_is_not_taken_for_a_flag():
    from slkd.run.train import parse_args

    assert parse_args(["--cfg", RES8X4, "SOLVER.LR", "-1.0"]).opts == ["SOLVER.LR", "-1.0"]


# --------------------------------------------------------------------------- python -m
def _python_m_error(cwd, argv):
    """``python -m slkd.run.train ARGV`` (the README's torchrun form), which must exit 1 with
    one ``slkd-train: error:`` line: there the module runs as ``__main__``."""
    result = subprocess.run(
        [sys.executable, "-m", "slkd.run.train", *argv], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert not (cwd / "output").exists()
    return result.stderr.strip()


def test_python_m_prints_a_usage_error_as_one_line(tmp_path):
    line = _python_m_error(tmp_path, SMOKE + ["SLD.GAMMA", "100", "--amp", "bf16"])
    assert line.startswith("slkd-train: error: --amp comes after the KEY VALUE overrides")


@pytest.mark.host
def test_python_m_cuda_without_gpu_is_one_line(host, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: --device cuda is valid here")
    line = _python_m_error(tmp_path, ["--cfg", RES8X4, "--device", "cuda"])
    assert line.startswith("slkd-train: error: --device cuda was asked for but torch sees no GPU here")


# --------------------------------------------------------------------------- PROTOCOL and LOGITS
@pytest.mark.host
@pytest.mark.parametrize(
    "override, fragment",
    [
        (["SLD.STRONG_VIEW", "False"], "SLD.STRONG_VIEW is now PROTOCOL.VIEWS"),
        (["SLD.TEACHER_SWAP", "False"], "set LOGITS.TEACHER_SWAP instead"),
        (["DISTILLER.TYPE", "MLKD", "PROTOCOL.VIEWS", "1"], "MLKD is two-view by construction"),
        (["PROTOCOL.VIEWS", "3"], "PROTOCOL.VIEWS is 3: choose 1"),
    ],
)
def test_bad_protocol_is_one_line_before_anything_runs(host, in_tmp, capsys, override, fragment):
    line = _one_line_error(capsys, _main(SMOKE + override))
    assert fragment in line


@pytest.mark.host
def test_kd_with_swap_and_standardization_trains_on_two_views(host, in_tmp, capsys):
    """KD (the host's kd_loss, through slkd.host.methods) at PROTOCOL.VIEWS 2 with both logit
    transforms: slkd's trainer feeds it two views and records them."""
    code = _main(SMOKE + ["DISTILLER.TYPE", "KD", "PROTOCOL.VIEWS", "2", "LOGITS.TEACHER_SWAP", "True", "LOGITS.STANDARDIZE", "True"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    summary = json.loads(next(Path("output").rglob("summary.json")).read_text())
    assert summary["views"] == 2
    metrics = [json.loads(line) for line in next(Path("output").rglob("metrics.jsonl")).read_text().splitlines()]
    assert len(metrics) == 2 and all(math.isfinite(m["loss_kd"]) and m["loss_kd"] > 0 for m in metrics)
