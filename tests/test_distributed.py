"""torchrun's path on a CPU with gloo: two processes compute what one process computes over
the same global batch (random augmentations included), and a two-process checkpoint resumes
in one process.

The runs compared are float64 with one intra-op thread in every process, so that sums taken in
another order (split over processes, over threads) differ far below the tolerances: in float32
a run's accuracy could flip on a near tie, and the tests failed now and then."""

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


def _worker(rank, world, port, prefix, epochs, batchnorm=False, random_views=False, workers=0, connector=False):
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    from slkd.utils import distributed

    context = distributed.init("cpu")
    try:
        trainer = tiny_trainer(
            _cfg(prefix, epochs, workers), context=context, batchnorm=batchnorm, random_views=random_views,
            connector=connector, dtype=torch.float64,
        )
        trainer.train()
    finally:
        distributed.shutdown()


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread in this process too, as in the spawned ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_process(prefix, epochs, **kwargs):
    """The run of one process, as the spawned ones run (float64)."""
    return tiny_trainer(_cfg(prefix, epochs), dtype=torch.float64, **kwargs)


def _cfg(prefix, epochs, workers=0):
    cfg = tiny_cfg(prefix, epochs=epochs)
    cfg.SLKD.LOADER.WORKERS = workers
    return cfg


def _run_two_processes(prefix, epochs, batchnorm=False, random_views=False, workers=0, connector=False):
    mp.start_processes(
        _worker, args=(2, _free_port(), str(prefix), epochs, batchnorm, random_views, workers, connector), nprocs=2, start_method="spawn"
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
    _one_process(tmp_path / "one", 2, random_views=random_views).train()
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
    _one_process(tmp_path / "mixed", 3).train(resume=True)
    _one_process(tmp_path / "one", 3).train()
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


def _distiller_state(prefix):
    return load(Path(prefix) / "tiny" / "run" / "latest")["model"]


def test_a_module_trained_beside_the_student_trains_as_in_one_process(tmp_path):
    """FitNet's regressor, CRD's embeddings: outside the student's DDP, their gradients are
    averaged by the trainer (without it each process trained its own copy)."""
    _one_process(tmp_path / "one", 2, connector=True).train()
    _run_two_processes(tmp_path / "two", epochs=2, connector=True)
    one, two = _distiller_state(tmp_path / "one"), _distiller_state(tmp_path / "two")
    weights = [name for name in one if name.startswith("connector.")]
    assert len(weights) == 2
    for name in weights:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)
    for x, y in zip(_metrics(tmp_path / "one"), _metrics(tmp_path / "two")):
        assert x["loss_feat"] == pytest.approx(y["loss_feat"], rel=1e-5)


@pytest.fixture
def one_process_group():
    """A gloo process group of one process, in the test's own process: the trainer's torchrun
    path without spawning. Left with distributed.shutdown()."""
    import torch.distributed as dist

    from slkd.utils import distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield distributed.DistContext()
    finally:
        distributed.shutdown()
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    "beside, refused",
    [(lambda: _Memory(), "_Memory.bank"), (lambda: torch.nn.BatchNorm1d(8), None)],
    ids=["memory-bank", "batchnorm"],
)
def test_state_kept_beside_the_student_is_refused_under_torchrun(tmp_path, monkeypatch, one_process_group, beside, refused):
    """A persistent buffer outside the student and teacher (CRD's memory bank) would be
    updated by each process on its own batches; BatchNorm statistics are shared from rank 0,
    and non-persistent buffers (SLDLoss's temperatures) are constants."""
    import tests.helpers.tiny as tiny
    from slkd.host.config import ConfigError

    original = tiny.TinyDistiller.__init__

    def with_module_beside(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.beside = beside()

    monkeypatch.setattr(tiny.TinyDistiller, "__init__", with_module_beside)
    if refused:
        message = rf"SLD keeps state beside the student \({refused}\) that each torchrun process would update on its own batches: train SLD in one process"
        with pytest.raises(ConfigError, match=message):
            tiny_trainer(_cfg(tmp_path, 1), context=one_process_group)
    else:
        tiny_trainer(_cfg(tmp_path, 1), context=one_process_group)


def test_ddp_lets_go_of_the_process_group_before_the_group_is_destroyed(tmp_path, one_process_group):
    """After train() the distiller holds the student itself, and nothing keeps DDP's wrapper
    (and its reducer, which refers to the process group) alive. A reducer freed after
    destroy_process_group destroys the group with the GIL held, joining a gloo thread that
    waits for the GIL: under torch 2.11 two-process runs hung as they ended."""
    import gc
    import weakref

    trainer = tiny_trainer(_cfg(tmp_path, 1), context=one_process_group)
    wrapper = trainer.distiller.student
    assert isinstance(wrapper, torch.nn.parallel.DistributedDataParallel)
    student, wrapper = wrapper.module, weakref.ref(wrapper)
    trainer.train()
    assert trainer.distiller.student is student
    gc.collect()  # as distributed.shutdown() does before it destroys the group
    assert wrapper() is None


def test_an_error_inside_ddps_forward_does_not_keep_the_wrapper_alive(tmp_path, one_process_group, monkeypatch):
    """The exception travels up through DDP's forward, whose frame holds the wrapper; while
    the exception lives (as it does through slkd-train's shutdown of the group), nothing may
    keep the wrapper alive."""
    import gc
    import weakref

    trainer = tiny_trainer(_cfg(tmp_path, 1), context=one_process_group)
    wrapper = trainer.distiller.student
    assert isinstance(wrapper, torch.nn.parallel.DistributedDataParallel)

    def fail(*args, **kwargs):
        raise RuntimeError("inside the student's forward")

    monkeypatch.setattr(wrapper.module, "forward", fail)
    wrapper = weakref.ref(wrapper)
    with pytest.raises(RuntimeError, match="inside the student's forward") as caught:
        trainer.train()
    names, tb = [], caught.value.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_qualname)
        tb = tb.tb_next
    assert "DistributedDataParallel.forward" in names  # the frame that held the wrapper
    gc.collect()  # as distributed.shutdown() does before it destroys the group
    assert wrapper() is None, "the exception's frames keep DDP's wrapper alive"


def test_wrapping_the_student_in_ddp_warns_nothing(tmp_path, one_process_group):
    """torch 2.14 deprecates DDP's broadcast_buffers with a FutureWarning at every start."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer = tiny_trainer(_cfg(tmp_path, 1), context=one_process_group)
    assert isinstance(trainer.distiller.student, torch.nn.parallel.DistributedDataParallel)


class _Memory(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("bank", torch.zeros(4, 8))


def _average_worker(rank, world, port, out):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch.distributed as dist

    from slkd.host import ddp
    from slkd.utils.distributed import DistContext

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        parameters = used_by_all, used_by_rank0, unused = [torch.nn.Parameter(torch.zeros(2, 3)) for _ in range(3)]
        used_by_all.grad = torch.full((2, 3), float(rank + 1))
        if rank == 0:
            used_by_rank0.grad = torch.full((2, 3), 4.0)
        ddp.average_gradients(parameters, DistContext(rank=rank, world_size=world))
        torch.save([None if p.grad is None else p.grad for p in parameters], f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gradients_beside_the_student_average_as_one_process_would(tmp_path):
    """A parameter one process has no gradient for adds zeros there; one no process has a
    gradient for keeps none (the optimizer skips it, as in one process)."""
    mp.start_processes(_average_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        everywhere, rank0_only, nowhere = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(everywhere, torch.full((2, 3), 1.5))
        assert torch.equal(rank0_only, torch.full((2, 3), 2.0))
        assert nowhere is None
