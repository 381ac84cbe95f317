"""Imported training logs (mdistiller's worklog.txt): parsing, and ``slkd-bench report
--import``'s rows and curves.

The logs are written here, in the format of mdistiller's trainer; with a host checkout
(``SLKD_MDISTILLER_PATH``, ``SLKD_RELEASED_SLD_PATH``, ``SLKD_LS_FORK_PATH``) its own
``BaseTrainer.log`` and ``train`` write one in a subprocess, and that one is parsed.
"""

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slkd.bench.cli import main
from slkd.bench.report import report
from slkd.bench.worklog import parse, read
from slkd.errors import BenchError
from tests.helpers.hosts import LS_FORK, MDISTILLER, RELEASED_SLD, checkout

TEST_ACC = [20.5, 41.25, 39.75]


def block(epoch, test_acc, lr="0.05"):
    """One epoch as mdistiller's trainer writes it (two-decimal numbers)."""
    return (
        "-------------------------\n"
        f"epoch: {epoch}\nlr: {lr}\ntrain_acc: {10.0 * epoch:.2f}\ntrain_loss: {3.0 / epoch:.2f}\n"
        f"test_acc: {test_acc:.2f}\ntest_acc_top5: 60.00\ntest_loss: 2.50\n"
        "-------------------------\n"
    )


def write_log(folder, accs=TEST_ACC, best=True, lr="0.05"):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(block(epoch, acc, lr) for epoch, acc in enumerate(accs, 1))
    if best:
        text += f"best_acc\t{max(accs):.2f}"  # no line break, as mdistiller writes it
    (folder / "worklog.txt").write_text(text)
    return folder / "worklog.txt"


def test_a_finished_log_reads_every_epoch_and_its_best(tmp_path):
    log = read(write_log(tmp_path / "run"))
    assert [line["epoch"] for line in log.epochs] == [1, 2, 3]
    assert [line["test_acc"] for line in log.epochs] == TEST_ACC
    assert log.epochs[1] == {"epoch": 2, "lr": 0.05, "train_acc": 20.0, "train_loss": 1.5, "test_acc": 41.25, "test_acc_top5": 60.0, "test_loss": 2.5}
    assert (log.finished, log.best, log.last) == (True, 41.25, 39.75)


def test_six_decimal_lr_of_the_logit_standardization_fork(tmp_path):
    log = read(write_log(tmp_path / "run", lr="0.000500"))
    assert log.epochs[0]["lr"] == 0.0005


def test_an_unfinished_log_takes_its_best_from_the_epochs(tmp_path):
    log = read(write_log(tmp_path / "run", accs=[5.0, 9.5, 7.0], best=False))
    assert (log.finished, log.best, log.last) == (False, 9.5, 7.0)


def test_a_resumed_log_keeps_the_last_block_of_each_epoch(tmp_path):
    text = block(1, 10.0) + block(2, 12.0) + block(2, 13.0) + block(3, 14.0) + "best_acc\t14.00" + block(4, 15.0) + "best_acc\t15.00"
    log = parse(text.replace("\n", "\r\n"), tmp_path / "worklog.txt")  # os.linesep on Windows
    assert [(line["epoch"], line["test_acc"]) for line in log.epochs] == [(1, 10.0), (2, 13.0), (3, 14.0), (4, 15.0)]
    assert log.best_acc == 15.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no epoch block"),
        ("hello world\n", "is not a 'key: value' line"),
        ("-----\nepoch: 1\ntest_acc: abc\n-----\n", "test_acc is 'abc', not a number"),
        ("-----\nepoch: 1\nlr: 0.1\n-----\n", "without test_acc"),
    ],
)
def test_what_is_not_a_worklog_is_refused_in_one_line(tmp_path, text, message):
    with pytest.raises(BenchError, match=message) as error:
        parse(text, tmp_path / "worklog.txt")
    assert "\n" not in str(error.value)


def test_a_missing_path_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--import", str(tmp_path / "nothing")]) == 1
    assert "no such file; give a worklog.txt or the run folder holding it" in capsys.readouterr().err


def read_rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_report_shows_imported_logs_as_labelled_rows_and_curves(tmp_path):
    named = write_log(tmp_path / "logs" / "cifar100_baselines" / "dkd,res32x4,res8x4")
    other = write_log(tmp_path / "logs" / "mine", accs=[30.0, 31.0], best=False)
    out = tmp_path / "report"
    written = report(out, echo=lambda line: None, imports=[named.parent, other])
    assert {path.name for path in written} >= {"summary.csv", "summary.md", "curves.png"}
    rows = {row["method"]: row for row in read_rows(out / "summary.csv")}
    dkd, mine = rows["DKD"], rows["imported"]
    assert (dkd["pair"], float(dkd["best_mean"]), float(dkd["last_mean"]), dkd["n"], dkd["epochs"]) == ("res32x4_res8x4", 41.25, 39.75, "1", "3")
    assert dkd["settings"] == f"imported: {named}" and dkd["data"] == "imported log"
    assert float(dkd["published"]) == 76.32, "an imported DKD sits beside DKD's published number"
    assert mine["pair"] == "imported" and mine["settings"] == f"imported: {other}, unfinished at epoch 2"
    md = (out / "summary.md").read_text()
    assert f"DKD [imported: {named}]" in md and "imported rows: read from a training log" in md


def test_imported_logs_sit_beside_the_runs(tmp_path):
    from tests.test_bench import write_run

    write_run(tmp_path, "res32x4_res8x4", "KD", 0, 73.0, 72.5)
    log = write_log(tmp_path / "elsewhere" / "kd,res32x4,res8x4")
    report(tmp_path, echo=lambda line: None, imports=[log])
    rows = read_rows(tmp_path / "summary.csv")
    assert [(row["method"], row["settings"]) for row in rows] == [("KD", ""), ("KD", f"imported: {log}")]


HOST_WRITER = textwrap.dedent(
    """
    import sys
    from types import SimpleNamespace as NS
    from mdistiller.engine.trainer import BaseTrainer

    class Writer:
        def add_scalar(self, *args): pass
        def flush(self): pass

    stub = NS(log_path=sys.argv[1], tf_writer=Writer(), best_acc=-1,
              cfg=NS(LOG=NS(WANDB=False), SOLVER=NS(EPOCHS=3)))
    accs = [20.5, 41.25, 39.75]
    stub.train_epoch = lambda epoch: BaseTrainer.log(stub, 0.05, epoch, {
        "train_acc": 10.0 * epoch, "train_loss": 3.0 / epoch, "test_acc": accs[epoch - 1],
        "test_acc_top5": 60.0, "test_loss": 2.5})
    BaseTrainer.train(stub)
    """
)


@pytest.mark.host
@pytest.mark.parametrize("variable", [MDISTILLER, RELEASED_SLD, LS_FORK])
def test_the_hosts_own_trainer_writes_what_is_read(tmp_path, variable):
    """mdistiller, the released SLD code and the logit-standardization fork (six-decimal lr)
    each write a worklog with their own BaseTrainer; the MLKD fork's: with it as host."""
    tree = checkout(variable, needs="mdistiller/engine/trainer.py")
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    subprocess.run([sys.executable, "-c", HOST_WRITER, str(tmp_path)], check=True, env=env, cwd=tmp_path, timeout=120)
    log = read(tmp_path)
    assert [line["test_acc"] for line in log.epochs] == TEST_ACC
    assert [line["train_loss"] for line in log.epochs] == [3.0, 1.5, 1.0]
    assert [line["lr"] for line in log.epochs] == [0.05] * 3
    assert (log.finished, log.best, log.last) == (True, 41.25, 39.75)
