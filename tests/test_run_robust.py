"""Bad input and faults an outside probe of slkd-train, slkd-bench and the trainer tried:
each loses no work, mixes none, and ends in one line that names the fix."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slkd.errors import CheckpointError, ConfigError, UsageError
from tests.helpers.tiny import tiny_cfg, tiny_trainer
from tests.test_run_train import RES8X4, RUN_FOLDER, SMOKE, _main, _one_line_error

SYNTHETIC = ["--cfg", RES8X4, "--device", "cpu"]
OVERRIDES = ["SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "8",
             "DATASET.TEST.BATCH_SIZE", "8", "SLKD.LOADER.WORKERS", "0"]  # fmt: skip
SYNTHETIC_FOLDER = Path("output") / "slkd_cifar100" / "sld,resnet32x4,resnet8x4SOLVER.BATCH_SIZE:8"  # the batch changes the method


# --------------------------------------------------------------------------- one run per folder
@pytest.mark.host
def test_a_second_slkd_train_on_a_claimed_folder_is_one_line(host, in_tmp, capsys):
    from slkd.run.train import LOCK_NAME
    from slkd.utils.locks import claim

    held = claim(in_tmp / RUN_FOLDER, LOCK_NAME)  # as a first slkd-train training there holds it
    try:
        line = _one_line_error(capsys, _main(SMOKE))
    finally:
        held.close()
    assert line == (
        f"slkd-train: error: {RUN_FOLDER} is in use by another slkd-train (pid {os.getpid()}): wait for it to end, "
        "or give this run another folder (LOG.PREFIX, EXPERIMENT.NAME or EXPERIMENT.TAG)"
    )
    assert not (in_tmp / RUN_FOLDER / "metrics.jsonl").exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    from slkd.run.train import LOCK_NAME, _claim_run_folder

    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from slkd.utils.locks import claim
            lock = claim({str(tmp_path)!r}, {LOCK_NAME!r})
            print("held", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"in use by another slkd-train \\(pid {holder.pid}\\)"):
            _claim_run_folder(str(tmp_path), "output")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        lock = _claim_run_folder(str(tmp_path), "output")
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        lock.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# --------------------------------------------------------------------------- run folders
@pytest.mark.host
def test_where_how_and_how_long_a_run_executes_stay_out_of_its_name(host):
    from slkd.host.config import load_config
    from slkd.run.train import experiment_name

    cfg = load_config(host.cfg, RES8X4, [])
    plain = experiment_name(cfg, [])
    assert plain == "slkd_cifar100/sld,resnet32x4,resnet8x4"
    placement = ["LOG.PREFIX", "/a/b", "SOLVER.EPOCHS", "2", "SLKD.LOADER.WORKERS", "0", "SLKD.AMP", "bf16",
                 "DATASET.NUM_WORKERS", "1", "SLKD.EVAL_FREQ", "2", "SLKD.CUDA_GRAPHS", "True"]  # fmt: skip
    assert experiment_name(cfg, placement) == plain
    # mdistiller's convention for what changes the method
    assert experiment_name(cfg, ["SLD.GAMMA", "10", "LOG.PREFIX", "/a/b"]) == plain + "SLD.GAMMA:10"


# --------------------------------------------------------------------------- what a run trains on
@pytest.mark.host
def test_resume_with_other_synthetic_data_is_refused_naming_the_flag(host, in_tmp, capsys):
    assert _main([*SYNTHETIC, "--synthetic", "16", *OVERRIDES]) == 0
    capsys.readouterr()
    line = _one_line_error(capsys, _main(["--resume", "--synthetic", "24", *SYNTHETIC, *OVERRIDES]))
    assert line == (
        f"slkd-train: error: --resume: the run in {SYNTHETIC_FOLDER} trained on 16 synthetic images, this command gives "
        f"24 synthetic images: resume with the same data (--synthetic 16, as in {SYNTHETIC_FOLDER / 'command.txt'}), "
        "or train this data in another folder (LOG.PREFIX, EXPERIMENT.NAME or EXPERIMENT.TAG)"
    )
    assert _main(["--resume", "--synthetic", "16", *SYNTHETIC, *OVERRIDES]) == 0  # the same data resumes


def test_resume_of_synthetic_data_with_the_real_data_is_refused(tmp_path, monkeypatch):
    from slkd.host import data

    tiny_trainer(tiny_cfg(tmp_path, epochs=1)).train()  # the tiny trainer's data are 24 synthetic images
    monkeypatch.setattr(data, "data_source", lambda dataset: "real")
    with pytest.raises(ConfigError, match=r"trained on 24 synthetic images, this command gives the real dataset: resume with the same data \(--synthetic 24, as in"):
        tiny_trainer(tiny_cfg(tmp_path, epochs=2)).train(resume=True)


def test_synthetic_data_tests_on_cifar100s_proportion():
    from slkd.run.train import synthetic_test_images

    assert [synthetic_test_images(n) for n in (1, 16, 640, 50000, 200000)] == [1, 4, 128, 10000, 10000]


# --------------------------------------------------------------------------- configs that train nothing
@pytest.mark.host
@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}\n"])
def test_an_empty_config_file_is_refused(host, in_tmp, capsys, text):
    (in_tmp / "empty.yaml").write_text(text)
    line = _one_line_error(capsys, _main(["--cfg", "empty.yaml", "--smoke", "--device", "cpu"]))
    assert line.startswith("slkd-train: error: empty.yaml is empty: it would train mdistiller's default ResNet50 -> resnet32 run")


@pytest.mark.host
def test_no_config_is_refused(host, in_tmp, capsys):
    line = _one_line_error(capsys, _main(["--smoke", "--device", "cpu"]))
    assert line.startswith("slkd-train: error: --cfg is missing: give a config")


@pytest.mark.host
def test_sld_with_both_loss_weights_zero_is_refused(host, in_tmp, capsys):
    line = _one_line_error(capsys, _main(SMOKE + ["SLD.CE_WEIGHT", "0.0", "SLD.KD_WEIGHT", "0.0"]))
    assert line == (
        "slkd-train: error: SLD.CE_WEIGHT and SLD.KD_WEIGHT are all 0: SLD's loss would be zero and the student "
        "would not train; give at least one of them a positive weight"
    )


@pytest.mark.host
@pytest.mark.parametrize(
    "method, zeros, named",
    [
        ("KD", {"KD.LOSS.CE_WEIGHT": 0.0, "KD.LOSS.KD_WEIGHT": 0.0}, "KD.LOSS.CE_WEIGHT and KD.LOSS.KD_WEIGHT"),
        ("MLKD", {"KD.LOSS.CE_WEIGHT": 0.0, "KD.LOSS.KD_WEIGHT": 0.0}, "KD.LOSS.CE_WEIGHT and KD.LOSS.KD_WEIGHT"),
        ("DKD", {"DKD.CE_WEIGHT": 0.0, "DKD.ALPHA": 0.0, "DKD.BETA": 0.0}, "DKD.CE_WEIGHT and DKD.ALPHA and DKD.BETA"),
        ("CRD", {"CRD.LOSS.CE_WEIGHT": 0.0, "CRD.LOSS.FEAT_WEIGHT": 0.0}, "CRD.LOSS.CE_WEIGHT and CRD.LOSS.FEAT_WEIGHT"),
    ],
)
def test_every_methods_loss_weights_all_zero_are_refused(host, method, zeros, named):
    from slkd.host.config import validate_loss_weights

    cfg = host.cfg.clone()
    cfg.defrost()
    cfg.DISTILLER.TYPE = method
    validate_loss_weights(cfg)  # the defaults train
    for key, value in zeros.items():
        node, _, leaf = key.rpartition(".")
        target = cfg
        for part in node.split("."):
            target = target[part]
        target[leaf] = value
    with pytest.raises(ConfigError, match=f"^{named} are all 0: {method}'s loss would be zero"):
        validate_loss_weights(cfg)
    target[leaf] = 0.5  # one weight left: it trains
    validate_loss_weights(cfg)
    cfg.DISTILLER.TYPE = "NONE"  # cross-entropy alone: no weights to check
    validate_loss_weights(cfg)


# --------------------------------------------------------------------------- one-line errors
@pytest.mark.host
def test_log_prefix_that_is_a_file_is_one_line(host, in_tmp, capsys):
    (in_tmp / "afile").write_text("x")
    line = _one_line_error(capsys, _main(SMOKE + ["LOG.PREFIX", "afile"]))
    assert line.startswith("slkd-train: error: cannot make the run folder afile/smoke/slkd_cifar100/sld,resnet32x4,resnet8x4 under LOG.PREFIX afile/smoke:")
    assert line.endswith("give LOG.PREFIX a folder you can write to, e.g. LOG.PREFIX ./output")


@pytest.mark.host
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_log_prefix_that_is_not_writable_is_one_line(host, in_tmp, capsys):
    (in_tmp / "locked").mkdir()
    (in_tmp / "locked").chmod(0o500)
    try:
        line = _one_line_error(capsys, _main(SMOKE + ["LOG.PREFIX", "locked"]))
    finally:
        (in_tmp / "locked").chmod(0o700)
    assert "cannot make the run folder" in line and "Permission denied" in line


@pytest.mark.host
def test_ctrl_c_is_one_line_that_says_how_to_resume(host, in_tmp, capsys, monkeypatch):
    from slkd.host.trainer import SLKDTrainer

    original = SLKDTrainer.run_epoch

    def interrupted_in_epoch_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(SLKDTrainer, "run_epoch", interrupted_in_epoch_2)
    code = _main(SMOKE)
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"slkd-train: interrupted: {RUN_FOLDER} keeps its last complete epoch; continue it with: "
        f"slkd-train --resume --cfg {RES8X4} --smoke --device cpu"
    )
    monkeypatch.setattr(SLKDTrainer, "run_epoch", original)
    assert _main(["--resume", *SMOKE]) == 0  # the command it names continues the run
    assert [json.loads(line)["epoch"] for line in (in_tmp / RUN_FOLDER / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_cut_last_metrics_line_is_dropped_on_resume_and_said(tmp_path, capsys):
    tiny_trainer(tiny_cfg(tmp_path, epochs=2)).train()
    folder = tmp_path / "tiny" / "run"
    os.replace(folder / "latest.prev", folder / "latest")  # as if killed while writing epoch 2's line
    whole = (folder / "metrics.jsonl").read_text().splitlines()
    (folder / "metrics.jsonl").write_text(whole[0] + "\n" + whole[1][:25])
    capsys.readouterr()
    tiny_trainer(tiny_cfg(tmp_path, epochs=2)).train(resume=True)
    out = capsys.readouterr().out
    assert f"{folder / 'metrics.jsonl'}: dropped 1 cut line(s) (a run killed while writing them), kept the 1 whole one(s)" in out
    assert [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_foreign_checkpoint_without_config_is_one_line(tmp_path):
    tiny_trainer(tiny_cfg(tmp_path, epochs=1)).train()
    folder = tmp_path / "tiny" / "run"
    torch.save({"model": {}, "epoch": 1}, folder / "latest")  # e.g. mdistiller's own tools/train.py checkpoint
    with pytest.raises(CheckpointError) as caught:
        tiny_trainer(tiny_cfg(tmp_path, epochs=2)).train(resume=True)
    assert str(caught.value) == (
        f"--resume: {folder / 'latest'} was not written by slkd-train (it has no 'config', 'optimizer', 'best_acc', "
        f"'rng' entry): resume only continues a run slkd-train started; to train in {folder} from scratch, move that "
        "file away and start without --resume"
    )


def _teacher_and_error(state):
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    try:
        teacher.load_state_dict(state)
    except RuntimeError as error:
        return teacher, error
    raise AssertionError("the state fits")


def test_a_teacher_of_another_architecture_is_named_completely():
    from slkd.host.models import _mismatch_message

    other = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10), torch.nn.Linear(10, 10)).state_dict()
    teacher, error = _teacher_and_error(other)
    message = _mismatch_message("resnet8x4", "t.pth", other, teacher, 10, error)
    assert message == (
        "teacher checkpoint t.pth does not fit architecture resnet8x4: 2 unexpected key(s), e.g. 3.weight, 3.bias; "
        "3 weight(s) of another shape, e.g. 0.weight (16, 4) (the model's (8, 4)), 0.bias (16,) (the model's (8,)). "
        "It holds another network: put resnet8x4's checkpoint there (slkd-fetch teachers --force), or set "
        "DISTILLER.TEACHER to the network it was trained as"
    )
    assert not message.endswith(":")


def test_a_teacher_saved_with_the_module_prefix_says_so():
    from slkd.host.models import _mismatch_message

    fitting = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10)).state_dict()
    wrapped = {"module." + key: value for key, value in fitting.items()}
    teacher, error = _teacher_and_error(wrapped)
    message = _mismatch_message("resnet8x4", "t.pth", wrapped, teacher, 10, error)
    assert message.startswith("teacher checkpoint t.pth does not fit architecture resnet8x4: its keys carry DataParallel's 'module.' prefix")
    assert "k.removeprefix('module.')" in message


# --------------------------------------------------------------------------- slkd-bench report
def test_report_over_damaged_records_says_which_run_left_the_means(tmp_path):
    from slkd.bench.report import report
    from tests.test_bench import write_run

    for seed, best in enumerate((70.0, 72.0, 90.0)):
        write_run(tmp_path, "p", "KD", seed, best, best)
    broken = tmp_path / "p" / "KD" / "seed2"
    (broken / "summary.json").write_text('{"best_acc": 90.0, "epochs_d')
    cut = tmp_path / "p" / "KD" / "seed1"
    with open(cut / "metrics.jsonl", "a") as stream:
        stream.write('{"epoch": 4, "test_')
    lines = []
    report(tmp_path, echo=lines.append)
    assert f"[slkd-bench] warning: {broken}: summary.json is unreadable (not a JSON object): the run is left out of the means; rerun it (slkd-bench run resumes it) or delete the folder" in lines
    assert f"[slkd-bench] warning: {cut}: metrics.jsonl has 1 unreadable line(s): its curves show the 3 whole one(s); rerun it (slkd-bench run resumes it) or delete the folder" in lines
    row = next(line for line in (tmp_path / "summary.csv").read_text().splitlines() if ",KD," in line or line.startswith("p,KD"))
    assert "71.00" in row or "71.0" in row  # the mean of the two readable runs
