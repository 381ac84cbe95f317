"""slkd.host.metrics: the epoch's on-device table, reduced and read by name, against sums
computed here in float64 from the same steps."""

import pytest
import torch

from slkd.host import metrics
from slkd.utils.distributed import DistContext


def _steps(sizes, classes=7, seed=0):
    """Per step: (loss, losses, stats, logits, target), the loss terms a vector and a 0-d value."""
    generator = torch.Generator().manual_seed(seed)
    steps = []
    for size in sizes:
        losses = {"loss_ce": torch.rand(size, generator=generator), "loss_kd": torch.rand((), generator=generator)}
        stats = {"swap_rate": torch.rand((), generator=generator)}
        loss = losses["loss_ce"].mean() + losses["loss_kd"]
        logits = torch.randn(size, classes, generator=generator)
        target = torch.randint(0, classes, (size,), generator=generator)
        steps.append((loss, losses, stats, logits, target))
    return steps


def _table(steps, stats=("swap_rate",)):
    table = metrics.EpochMetrics(len(steps) + 1, ["loss_ce", "loss_kd"], stats, torch.device("cpu"))
    for loss, losses, step_stats, logits, target in steps:
        table.record(loss, losses, step_stats, logits, target)
    return table


def test_sums_are_per_image_and_read_by_name():
    steps = _steps([5, 5, 3])
    sums = _table(steps).reduce(DistContext())
    sizes = [len(target) for *_, target in steps]
    mean = lambda value: float(value.double().mean())
    expected = {
        "train_loss": sum(size * mean(loss) for size, (loss, *_) in zip(sizes, steps)),
        "loss_ce": sum(size * mean(losses["loss_ce"]) for size, (_, losses, *_) in zip(sizes, steps)),
        "loss_kd": sum(size * mean(losses["loss_kd"]) for size, (_, losses, *_) in zip(sizes, steps)),
        "swap_rate": sum(size * mean(stats["swap_rate"]) for size, (_, _, stats, *_) in zip(sizes, steps)),
    }
    for name, value in expected.items():
        assert sums[name] == pytest.approx(value, rel=1e-6), name
    logits = torch.cat([step[3] for step in steps]).double()
    target = torch.cat([step[4] for step in steps])
    rank = (logits > logits.gather(1, target.view(-1, 1))).sum(dim=1)  # the label's rank, 0 = top
    assert sums["top1_hits"] == int((rank == 0).sum()) and sums["top5_hits"] == int((rank < 5).sum())
    assert sums["images"] == 13 and sums["non_finite_steps"] == 0


def test_a_column_more_moves_no_other_number():
    """A statistic added before the others leaves every other name's sum as it was."""
    steps = _steps([4, 6])
    plain = _table(steps).reduce(DistContext())
    for _, _, stats, *_ in steps:
        stats["first"] = torch.tensor(100.0)
    wider = _table(steps, stats=("first", "swap_rate")).reduce(DistContext())
    assert wider.pop("first") == pytest.approx(1000.0)
    assert wider == plain


def test_the_first_non_finite_step_names_its_loss_terms():
    steps = _steps([4, 4, 4])
    for index in (1, 2):
        loss, losses, *rest = steps[index]
        losses["loss_kd"] = torch.tensor(float("nan"))
        steps[index] = (loss + losses["loss_kd"], losses, *rest)
    table = _table(steps)
    assert table.reduce(DistContext())["non_finite_steps"] == 2
    step, terms = table.first_non_finite()
    assert step == 1 and list(terms) == ["loss_ce", "loss_kd"]
    assert terms["loss_ce"] == pytest.approx(float(steps[1][1]["loss_ce"].mean())) and terms["loss_kd"] != terms["loss_kd"]
    assert _table(_steps([4])).first_non_finite() is None


def test_hits_count_each_rank_with_fewer_classes_than_ranks():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3]])
    out = torch.zeros(metrics.TOP_K)
    metrics.hits_by_rank(logits, torch.tensor([2, 2]), out=out)
    assert out.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert metrics.top1_topk_hits(logits, torch.tensor([1, 2])).tolist() == [1.0, 2.0]


@pytest.mark.parametrize("stats", [("loss_ce",), ("images",)], ids=["a-loss-term", "a-reduced-name"])
def test_names_that_clash_are_refused(stats):
    with pytest.raises(ValueError, match=rf"need names of their own: {stats[0]} clash"):
        metrics.EpochMetrics(2, ["loss_ce", "loss_kd"], stats, torch.device("cpu"))
