"""The training epoch's numbers, kept on the device and read once, by name.

A step's loss terms, statistics and hit counts are written into a row of an on-device table
(:class:`EpochMetrics`, a few kernels, no host-device synchronisation); at the end of the
epoch the rows are reduced on the device, summed over torchrun's processes, and read back in
one transfer, each number under its name (:meth:`EpochMetrics.reduce`). Adding a column
moves nothing that is read by position.
"""

from __future__ import annotations

import torch

from slkd.utils.distributed import DistContext, all_reduce_sum

TOP_K = 5  # accuracies are reported at top-1 and top-5

#: the table's column of the step's total loss (the sum of its loss terms)
LOSS = "train_loss"
#: the per-image sums :meth:`EpochMetrics.reduce` returns beside the table's scalar columns
TOP1_HITS, TOPK_HITS, IMAGES, NON_FINITE_STEPS = "top1_hits", f"top{TOP_K}_hits", "images", "non_finite_steps"


class EpochMetrics:
    """One row per training step, on ``device``: the scalar columns ``train_loss``, each name
    of ``loss_terms``, each name of ``stats`` (a mean over the batch), then ``TOP_K`` columns
    counting the images whose label is at rank 1, ..., ``TOP_K`` of the logits.

    Args:
        steps: rows to hold (the loader's length; fewer may be written).
        loss_terms: the names of the step's loss terms, in the order they are reported.
        stats: the names of the distiller's ``step_stats``.
        device: where the table lives.
    """

    def __init__(self, steps: int, loss_terms, stats, device: torch.device):
        self.loss_terms, self.stats = list(loss_terms), list(stats)
        self.scalars = [LOSS, *self.loss_terms, *self.stats]
        reserved = {TOP1_HITS, TOPK_HITS, IMAGES, NON_FINITE_STEPS}
        clashing = sorted({name for name in self.scalars if self.scalars.count(name) > 1 or name in reserved})
        if clashing:
            raise ValueError(f"the distiller's loss terms and step_stats need names of their own: {', '.join(clashing)} clash")
        self.columns = {name: index for index, name in enumerate(self.scalars)}
        self.scalar_columns = slice(0, len(self.scalars))
        self.hit_columns = slice(len(self.scalars), len(self.scalars) + TOP_K)
        self.table = torch.zeros((steps, self.hit_columns.stop), device=device)
        self.batch_sizes: list[int] = []

    def record(self, loss: torch.Tensor, losses: dict, stats: dict, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Write the next row (four kernels, no sync): ``loss`` and the ``losses`` and ``stats``
        named at construction (mean of each over the batch), and the hits of ``logits``."""
        row = self.table[len(self.batch_sizes)]
        values = [loss, *(losses[name] for name in self.loss_terms), *(stats[name] for name in self.stats)]
        torch.stack([_scalar(value) for value in values], out=row[self.scalar_columns])
        hits_by_rank(logits, target, out=row[self.hit_columns])
        self.batch_sizes.append(target.shape[0])

    def reduce(self, context: DistContext) -> dict:
        """The epoch's sums over all processes, read in one transfer: each scalar column
        weighted by its batch's size (so a sum over images), ``top1_hits`` and ``top5_hits``,
        ``images`` and ``non_finite_steps`` (steps whose total loss is NaN or infinite)."""
        rows = self.table[: len(self.batch_sizes)]
        weights = torch.tensor(self.batch_sizes, dtype=rows.dtype).to(rows.device, non_blocking=True)
        hits = rows[:, self.hit_columns].sum(dim=0)
        non_finite = (~torch.isfinite(rows[:, self.columns[LOSS]])).sum().to(rows.dtype)
        totals = torch.cat([weights @ rows[:, self.scalar_columns], torch.stack([hits[0], hits.sum(), weights.sum(), non_finite])])
        all_reduce_sum(totals, context)
        return dict(zip([*self.scalars, TOP1_HITS, TOPK_HITS, IMAGES, NON_FINITE_STEPS], totals.tolist()))

    def first_non_finite(self):
        """``(step, {loss term: value})`` of this process's first step whose total loss is not
        finite, or None (reads the table on the host: for the error message only)."""
        losses = self.table[: len(self.batch_sizes), self.columns[LOSS]]
        bad = (~torch.isfinite(losses)).nonzero()
        if not len(bad):
            return None
        step = int(bad[0])
        row = self.table[step].tolist()
        return step, {name: row[self.columns[name]] for name in self.loss_terms}


def hits_by_rank(logits: torch.Tensor, target: torch.Tensor, out: torch.Tensor) -> None:
    """Write into ``out`` (``(TOP_K,)`` float) how many rows have their label at rank 1, 2, ...
    of ``logits``; with fewer than ``TOP_K`` classes the entries past them are left as they
    are (zeros in a fresh table)."""
    k = min(TOP_K, logits.shape[1])
    hits = logits.topk(k, dim=1).indices == target.view(-1, 1)
    torch.sum(hits, dim=0, dtype=out.dtype, out=out[:k])


def top1_topk_hits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(2,)`` counts of rows whose label is the top-1 and among the top-``TOP_K`` predictions."""
    hits = torch.zeros(TOP_K, device=logits.device)
    hits_by_rank(logits, target, out=hits)
    return torch.stack([hits[0], hits.sum()])


def _scalar(value: torch.Tensor) -> torch.Tensor:
    """A loss term or statistic as a 0-d float32 tensor (a mean where a host returns a vector)."""
    value = value.detach()
    return (value.mean() if value.dim() else value).float()
