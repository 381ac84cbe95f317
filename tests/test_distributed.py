"""torchrun's path on a CPU with gloo: two processes compute what one process computes over
the same global batch (random augmentations included), and a two-process checkpoint resumes
in one process."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from slkd.utils.checkpoint import load
from tests.helpers.tiny import tiny_cfg, tiny_trainer

KEYS = ("train_loss", "loss_ce", "loss_kd", "train_acc", "test_acc", "test_loss", "teacher_swap_rate")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world, port, prefix, epochs, batchnorm=False, random_views=False, workers=0):
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    from slkd.utils import distributed

    context = distributed.init("cpu")
    try:
        tiny_trainer(_cfg(prefix, epochs, workers), context=context, batchnorm=batchnorm, random_views=random_views).train()
    finally:
        distributed.shutdown()


def _cfg(prefix, epochs, workers=0):
    cfg = tiny_cfg(prefix, epochs=epochs)
    cfg.SLKD.LOADER.WORKERS = workers
    return cfg


def _run_two_processes(prefix, epochs, batchnorm=False, random_views=False, workers=0):
    mp.start_processes(
        _worker, args=(2, _free_port(), str(prefix), epochs, batchnorm, random_views, workers), nprocs=2, start_method="spawn"
    )


def _metrics(prefix):
    return [json.loads(line) for line in (Path(prefix) / "tiny" / "run" / "metrics.jsonl").read_text().splitlines()]


def _student(prefix):
    return load(Path(prefix) / "tiny" / "run" / "student_latest")["model"]


def _assert_same(a, b):
    assert [line["epoch"] for line in a] == [line["epoch"] for line in b]
    for x, y in zip(a, b):
        for key in KEYS:
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("random_views", [False, True], ids=["fixed-views", "random-views"])
def test_two_processes_match_one_process_over_the_same_global_batch(tmp_path, random_views):
    """With random views each image's crop, flip, RandAugment and Cutout come from its own
    key, so both processes (one loader worker each) augment as the one process does: with
    draws taken from each process's streams, the two ranks would even repeat each other's."""
    tiny_trainer(_cfg(tmp_path / "one", 2), random_views=random_views).train()
    _run_two_processes(tmp_path / "two", epochs=2, random_views=random_views, workers=1 if random_views else 0)
    _assert_same(_metrics(tmp_path / "one"), _metrics(tmp_path / "two"))
    assert _metrics(tmp_path / "two")[0]["train_images"] == 24  # all images, counted over processes
    for name, tensor in _student(tmp_path / "one").items():
        torch.testing.assert_close(_student(tmp_path / "two")[name], tensor, rtol=1e-5, atol=1e-6)
    state = load(tmp_path / "two" / "tiny" / "run" / "latest")
    assert state["world_size"] == 2
    assert not any(".module." in key or key.startswith("module.") for key in state["model"])


def test_checkpoint_of_two_processes_resumes_in_one(tmp_path):
    _run_two_processes(tmp_path / "mixed", epochs=2)
    tiny_trainer(tiny_cfg(tmp_path / "mixed", epochs=3)).train(resume=True)
    tiny_trainer(tiny_cfg(tmp_path / "one", epochs=3)).train()
    _assert_same(_metrics(tmp_path / "one"), _metrics(tmp_path / "mixed"))


def test_batchnorm_student_trains_under_ddp(tmp_path):
    """The student runs once per view before one backward, with BatchNorm statistics kept
    per process and shared from rank 0 before evaluation. (The CUDA failure this guards
    against, DDP's buffer broadcast rewriting statistics cuDNN saved, needs a GPU:
    benchmarks/gpu_check.sh runs torchrun there.)"""
    _run_two_processes(tmp_path / "bn", epochs=2, batchnorm=True)
    lines = _metrics(tmp_path / "bn")
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(line["train_images"] == 24 for line in lines)
    running_mean = _student(tmp_path / "bn")["norm.running_mean"]
    assert running_mean.abs().sum() > 0
