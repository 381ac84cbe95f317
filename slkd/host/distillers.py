"""SLD and MLKD as mdistiller ``Distiller`` subclasses: thin wrappers around slkd.losses.

Both follow the call of the MLKD fork's two-view trainer,
``forward_train(image_weak=, image_strong=, target=, epoch=)``, and return the weak-view
student logits and a dict of loss terms. ``SLD`` with ``PROTOCOL.VIEWS: 1`` takes
``forward_train(image=, target=, epoch=)`` instead, so it also runs under mdistiller's
stock single-view trainers. Both apply ``LOGITS`` (:mod:`slkd.host.protocol`).

After each training step ``distiller.step_stats`` holds on-device scalars for logging
(the share of rows each swap changed, the SLD terms without weights); reading them is
the trainer's business, so a step itself never waits on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slkd.host.config import validate_sld
from slkd.host.protocol import resolve_standardize, resolve_teacher_swap, resolve_views, validate_protocol
from slkd.host.registry import import_host
from slkd.losses.logits import standardize_logits
from slkd.losses.mlkd import mlkd_losses
from slkd.losses.sld import SLDLoss, swap_logits

Distiller = import_host().distiller_base


class SLD(Distiller):
    """Swapped Logit Distillation (docs/method.md, section 3).

    ``loss_ce = CE_WEIGHT * sum_views CE(z_v, y)`` and
    ``loss_kd = KD_WEIGHT * sum_views mean_rows(L_TS + [epoch > GAMMA] L_SS)`` over the weak
    and strong views (the weak view alone with ``PROTOCOL.VIEWS: 1``). The teacher swap of
    ``L_TS`` is ``LOGITS.TEACHER_SWAP`` (on unless set False); with ``LOGITS.STANDARDIZE``
    the loss sees z-scored student and teacher rows, the cross-entropy the raw ones. Student
    and teacher run once per view, so the student's BatchNorm sees each view on its own; the
    teacher stays in eval mode, runs without gradient, and takes both views in one pass (in
    eval mode that gives the same logits).
    """

    def __init__(self, student, teacher, cfg):
        super().__init__(student, teacher)
        validate_sld(cfg)
        validate_protocol(cfg)
        node = cfg.SLD
        self.ce_weight = float(node.CE_WEIGHT)
        self.kd_weight = float(node.KD_WEIGHT)
        self.num_views = resolve_views(cfg)
        self.standardize = resolve_standardize(cfg)
        self.criterion = SLDLoss(
            temperatures=[float(t) for t in node.TEMPERATURES],
            gamma=int(node.GAMMA),
            teacher_swap=resolve_teacher_swap(cfg),
            student_swap=bool(node.STUDENT_SWAP),
            detach_pseudo_teacher=bool(node.DETACH_PSEUDO_TEACHER),
            fused=bool(cfg.SLKD.FUSED_LOSS) if "SLKD" in cfg else False,
        )
        self.step_stats: dict[str, torch.Tensor] = {}

    def graph_key(self, epoch: int) -> bool:
        """What of ``epoch`` the step depends on (for ``SLKD.CUDA_GRAPHS``): whether ``L_SS`` is on."""
        return self.criterion.student_swap_on(epoch)

    def forward_train(self, image_weak=None, image_strong=None, target=None, **kwargs):
        epoch = _required_epoch(kwargs, "SLD")
        views = _views(self.num_views == 2, image_weak, image_strong, kwargs.get("image"), "SLD")
        student = [self.student(view)[0] for view in views]
        batch = target.shape[0]
        student_rows = torch.cat(student) if len(views) > 1 else student[0]
        targets = target.repeat(len(views))
        # the views have equal sizes: views x the mean over all rows = the sum of per-view means
        loss_ce = self.ce_weight * len(views) * F.cross_entropy(student_rows, targets)
        teacher_rows = teacher_logits(self.teacher, views)
        if self.standardize:  # row-wise, so the views may stay stacked
            student_rows, teacher_rows = standardize_logits(student_rows), standardize_logits(teacher_rows)
        terms = self.criterion.terms(student_rows, teacher_rows, targets, epoch)
        # sum over all rows of both views / batch = sum over views of the per-view mean
        teacher_term = terms.teacher_swap_loss.sum() / batch
        student_term = terms.student_swap_loss.sum() / batch
        loss_kd = self.kd_weight * (teacher_term + student_term)
        self.step_stats = {
            "sld_teacher_term": teacher_term.detach(),
            "sld_student_term": student_term.detach(),
            "teacher_swap_rate": terms.teacher_swap_rate,
            "student_swap_rate": terms.student_swap_rate,
        }
        return student[0], {"loss_ce": loss_ce, "loss_kd": loss_kd}


class MLKD(Distiller):
    """Multi-level logit distillation as the released MLKD code computes it (docs/method.md, section 5).

    Registered only on hosts without an MLKD of their own. Reads ``KD.TEMPERATURE`` and
    ``KD.LOSS.{CE,KD}_WEIGHT`` as the released code does; the quirks it reproduces are
    listed in :mod:`slkd.losses.mlkd`. Two views only (``PROTOCOL.VIEWS`` 2 or null). With
    ``LOGITS.TEACHER_SWAP`` every teacher row the loss sees is swapped (masks and
    consistency terms included); ``LOGITS.STANDARDIZE`` z-scores the KD terms' logits only,
    as the logit-standardization authors' MLKD does.
    """

    num_views = 2

    def __init__(self, student, teacher, cfg):
        super().__init__(student, teacher)
        validate_protocol(cfg)
        self.base_temperature = float(cfg.KD.TEMPERATURE)
        self.ce_weight = float(cfg.KD.LOSS.CE_WEIGHT)
        self.kd_weight = float(cfg.KD.LOSS.KD_WEIGHT)
        self.teacher_swap = resolve_teacher_swap(cfg)
        self.standardize = resolve_standardize(cfg)
        self.step_stats: dict[str, torch.Tensor] = {}

    def graph_key(self, epoch: int) -> None:
        """The step does not depend on the epoch (for ``SLKD.CUDA_GRAPHS``)."""
        return None

    def forward_train(self, image_weak=None, image_strong=None, target=None, **kwargs):
        weak, strong = _views(True, image_weak, image_strong, kwargs.get("image"), "MLKD")
        student_weak, student_strong = self.student(weak)[0], self.student(strong)[0]
        teacher_both = teacher_logits(self.teacher, [weak, strong])
        if self.teacher_swap:
            teacher_both = swap_logits(teacher_both, target.repeat(2))
        teacher_weak, teacher_strong = teacher_both.chunk(2)
        losses = mlkd_losses(
            student_weak,
            student_strong,
            teacher_weak,
            teacher_strong,
            target,
            base_temperature=self.base_temperature,
            ce_weight=self.ce_weight,
            kd_weight=self.kd_weight,
            standardize=self.standardize,
        )
        return student_weak, losses


@torch.no_grad()
def teacher_logits(teacher, views: list) -> torch.Tensor:
    """The teacher's logits for the rows of all ``views``, one view after the other
    (``(views x B, C)``), without gradient.

    In eval mode BatchNorm uses its running statistics, so the teacher's output for an image
    does not depend on the rest of the batch: the views go through in one forward pass (half
    the kernel launches). A teacher left in training mode runs each view on its own.
    """
    if len(views) == 1:
        return teacher(views[0])[0]
    if teacher.training:
        return torch.cat([teacher(view)[0] for view in views])
    return teacher(torch.cat(views))[0]


def _required_epoch(kwargs: dict, method: str) -> int:
    if "epoch" not in kwargs:
        raise TypeError(
            f"{method}.forward_train needs epoch= (the current epoch, from 1): its loss "
            "depends on it. mdistiller's trainers pass it; pass it in your own loop."
        )
    return int(kwargs["epoch"])


def _views(two_views: bool, image_weak, image_strong, image, method: str) -> list:
    if two_views:
        if image_weak is None or image_strong is None:
            raise TypeError(
                f"{method} needs two views per batch (image_weak=, image_strong=) but the "
                f"trainer passed {'image=' if image is not None else 'no image'}. Train with "
                f"slkd's trainer (SOLVER.TRAINER: slkd) or the MLKD fork's 'ours' trainer"
                + (", or set PROTOCOL.VIEWS 1 for one view." if method != "MLKD" else ".")
            )
        return [image_weak, image_strong]
    single = image if image is not None else image_weak
    if single is None:
        raise TypeError(f"{method} with PROTOCOL.VIEWS 1 needs image= (one view per batch)")
    return [single]
