"""slkd.host.graphs (SLKD.CUDA_GRAPHS) on a CPU, with tests/helpers/graphs.py standing in
for CUDA graphs: the bookkeeping of warm-up, capture and replay, and whole training runs that
must equal eager training. tests/test_cuda.py runs the real graphs on a GPU."""

import json
from pathlib import Path

import pytest
import torch

from slkd.host import graphs
from slkd.host.config import ConfigError, validate_run_options
from tests.helpers.graphs import ReplayBackend
from tests.helpers.tiny import tiny_cfg, tiny_trainer


# --------------------------------------------------------------------------- the nest helper
def test_flatten_and_rebuild_nests():
    a, b, c, d = (torch.full((2,), float(i)) for i in range(4))
    nest = ([a, b], c, {"index": d})
    flat, rebuild = graphs._flatten(nest)
    assert [t is x for t, x in zip(flat, (a, b, c, d))] == [True] * 4
    rebuilt = rebuild([t + 10 for t in flat])
    assert isinstance(rebuilt, tuple) and isinstance(rebuilt[0], list) and isinstance(rebuilt[2], dict)
    assert rebuilt[0][1].tolist() == [11.0, 11.0] and rebuilt[2]["index"].tolist() == [13.0, 13.0]
    with pytest.raises(TypeError, match="got str"):
        graphs._flatten((a, "label"))


# --------------------------------------------------------------------------- StepGraphs
class Counting:
    """A step that adds its input's sum to a running total (state a replay must update)."""

    def __init__(self):
        self.total = torch.zeros(())
        self.calls = 0

    def __call__(self, x, extras):
        self.calls += 1
        self.total += x.sum() + extras["offset"]
        return {"total": self.total.clone(), "seen": x.clone()}


def test_warm_up_then_capture_then_replay_with_the_new_batch():
    step, backend = Counting(), ReplayBackend()
    runner = graphs.StepGraphs(backend, warmup_steps=2)
    offset = {"offset": torch.tensor(0.5)}
    totals = []
    for value in range(1, 6):
        out = runner.run("key", (torch.full((3,), float(value)), offset), step)
        totals.append(float(out["total"]))
        assert out["seen"].tolist() == [float(value)] * 3  # the replay saw this step's batch
    assert totals == [3.5, 10.0, 19.5, 32.0, 47.5]
    assert backend.captures == 1 and runner.replays == 2
    assert dict(runner.eager_steps) == {next(iter(runner.captured)): 2}


def test_a_new_shape_has_its_own_graph_and_a_new_key_releases_the_old_ones():
    step, backend = Counting(), ReplayBackend()
    runner = graphs.StepGraphs(backend, warmup_steps=1)
    offset = {"offset": torch.tensor(0.0)}
    for _ in range(3):
        runner.run("a", (torch.ones(4), offset), step)
        runner.run("a", (torch.ones(2), offset), step)
    assert backend.captures == 2 and len(runner.captured) == 2
    for _ in range(2):
        runner.run("b", (torch.ones(4), offset), step)
    assert [signature[0] for signature in runner.captured] == ["b"]
    assert float(step.total) == 3 * 4 + 3 * 2 + 2 * 4


def test_graph_key_uses_the_distillers_key_or_the_epoch():
    class Keyed:
        def graph_key(self, epoch):
            return epoch > 150

    assert graphs.graph_key(Keyed(), 151) is True and graphs.graph_key(Keyed(), 3) is False
    assert graphs.graph_key(object(), 7) == 7


# --------------------------------------------------------------------------- whole runs
def _metrics(prefix):
    lines = (Path(prefix) / "tiny" / "run" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith(("seconds", "per_second"))} for line in lines]


def _weights(trainer):
    return {name: value.clone() for name, value in trainer.distiller.student.state_dict().items()}


@pytest.mark.parametrize("amp", ["none", "fp16"])
@pytest.mark.parametrize("keyed", [True, False], ids=["distiller-key", "epoch-key"])
def test_training_with_step_graphs_equals_eager_training(tmp_path, keyed, amp, monkeypatch):
    """Batches of 5, 5, 5, 5 and 4; the learning rate decays at epoch 3 and the pseudo-teacher
    switches on at epoch 2: new keys, a graph for the small last batch, replays in every
    epoch, and every replay runs with the learning rate its graph was recorded with. fp16 runs
    with the GPU's fused SGD, whose gradient scaler decides on the device whether to step; its
    scale starts high and doubles after every good step, so steps are skipped and the scale
    moves between replays."""
    from slkd.host import optim
    from tests.helpers import tiny

    if keyed:
        monkeypatch.setattr(tiny.TinyDistiller, "graph_key", lambda self, epoch: self.criterion.student_swap_on(epoch), raising=False)
    runs = {}
    for name in ("eager", "graphs"):
        cfg = tiny_cfg(tmp_path / name, epochs=4, batch=5)
        cfg.SLKD.AMP = amp
        trainer = tiny_trainer(cfg)
        if amp == "fp16":
            trainer.optimizer = optim.sgd(trainer.distiller.get_learnable_parameters(), cfg.SOLVER, fused=True)
            trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=1)
        if name == "graphs":
            backend = ReplayBackend(frozen=lambda trainer=trainer: [group["lr"] for group in trainer.optimizer.param_groups])
            trainer.step_graphs = graphs.StepGraphs(backend, warmup_steps=1)
        trainer.train()
        runs[name] = (_metrics(tmp_path / name), _weights(trainer), trainer.scaler and trainer.scaler.get_scale())
    assert runs["graphs"][0] == runs["eager"][0]
    if amp == "fp16":  # 20 steps: doubled 20 times without a skip
        assert runs["graphs"][2] == runs["eager"][2] < 2.0**40
    for name, value in runs["eager"][1].items():
        assert torch.equal(runs["graphs"][1][name], value), name
    # keys: epoch 1 (off, lr 0.1), 2 (on, 0.1), 3-4 (on, 0.01). A key's batches of 5: one warm
    # step, one recorded, two replayed; the batch of 4 reaches its recording only in epoch 4
    # (keyed) or never (a new key every epoch)
    assert backend.captures == 4
    assert trainer.step_graphs.replays == (10 if keyed else 8)


def test_a_key_without_the_learning_rate_would_replay_a_stale_one(tmp_path):
    """The stand-in's check has teeth: with one key for every step (no learning rate in it),
    the graph recorded before the decay at epoch 3 would be replayed after it with the old
    learning rate."""
    trainer = tiny_trainer(tiny_cfg(tmp_path, epochs=3, batch=5))
    backend = ReplayBackend(frozen=lambda: [group["lr"] for group in trainer.optimizer.param_groups])
    trainer.step_graphs = graphs.StepGraphs(backend, warmup_steps=1)
    trainer.graph_key = lambda epoch: "one key"
    with pytest.raises(AssertionError, match=r"replayed with \[0\.01\d*\] but recorded with \[0\.1\]"):
        trainer.train()


def test_cuda_graphs_need_a_cuda_device(tmp_path):
    cfg = tiny_cfg(tmp_path)
    cfg.SLKD.CUDA_GRAPHS = True
    with pytest.raises(ConfigError, match="SLKD.CUDA_GRAPHS records CUDA graphs, this run is on cpu"):
        tiny_trainer(cfg)


def test_cuda_graphs_take_every_precision(tmp_path):
    cfg = tiny_cfg(tmp_path)
    cfg.SLKD.CUDA_GRAPHS = True
    for amp in ("none", "bf16", "fp16"):
        cfg.SLKD.AMP = amp
        validate_run_options(cfg)
