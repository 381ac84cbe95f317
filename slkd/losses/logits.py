"""Logit transforms applied between the networks and a method's distillation loss.

Notation: student logits ``z`` and teacher logits ``t`` of shape ``(N, C)``, labels ``y`` of
shape ``(N,)``.

* Logit standardization (Sun et al., "Logit Standardization in Knowledge Distillation",
  CVPR 2024), per row ``u`` of ``C`` logits::

      Z(u) = (u - mean(u)) / (eps + std(u)),   std(u) = sqrt(sum_c (u_c - mean(u))^2 / (C - 1))

  (Bessel's correction and ``eps = 1e-7`` added to the standard deviation, as in the
  authors' code, ``sunshangquan/logit-standardization-KD``). Differentiable: the student's
  gradient flows through ``Z``.
* The teacher swap of SLD, :func:`slkd.losses.sld.swap_logits`: in each teacher row the
  label's logit and the top logit exchange places.

``Z`` commutes with the swap (mean and standard deviation do not depend on the order of a
row, and ``Z`` acts on each entry alone), so ``Z(swap(t, y)) = swap(Z(t), y)`` and the order
of the two transforms does not matter.
"""

from __future__ import annotations

import torch

from slkd.errors import LossInputError
from slkd.losses.checks import check_logits, check_same_device, check_same_shape
from slkd.losses.sld import swap_logits

__all__ = ["STANDARDIZE_EPS", "standardize_logits", "transform_logits"]

#: Added to each row's standard deviation, as in the logit-standardization authors' code.
STANDARDIZE_EPS = 1e-7


def standardize_logits(logits: torch.Tensor, eps: float = STANDARDIZE_EPS) -> torch.Tensor:
    """Z-score each row: ``(u - mean(u)) / (eps + std(u))``, ``std`` with Bessel's correction.

    Args:
        logits: ``(N, C)`` floating tensor, ``C >= 2`` (one class has no spread).
        eps: added to the standard deviation; ``>= 0``.

    Returns:
        ``(N, C)`` tensor of ``logits``'s dtype; each row has mean 0 and (for ``eps = 0``)
        Bessel-corrected standard deviation 1. Differentiable.

    >>> import torch
    >>> from slkd.losses.logits import standardize_logits
    >>> row = standardize_logits(torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]))
    >>> [round(v, 4) for v in row[1].tolist()]
    [-1.0, 0.0, 1.0]
    """
    check_logits("logits", logits)
    if logits.shape[1] < 2:
        raise LossInputError(f"standardizing needs at least 2 classes per row (one has no spread), got shape {tuple(logits.shape)}")
    if not eps >= 0:
        raise LossInputError(f"eps must be a number >= 0, got {eps}")
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (eps + std)


def transform_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
    *, swap: bool = False, standardize: bool = False, eps: float = STANDARDIZE_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits a method's distillation term sees: ``(Z(z), Z(swap(t, y)))``, each transform
    only when asked for.

    Args:
        student_logits: ``(N, C)``; gradient flows through.
        teacher_logits: ``(N, C)``.
        target: ``(N,)`` integer labels in ``[0, C)`` (used by the swap only).
        swap: exchange, in each teacher row, the label's logit with the top one.
        standardize: z-score student and teacher rows (:func:`standardize_logits`).
        eps: the standardization's epsilon.

    Returns:
        ``(student, teacher)``, ``(N, C)`` each; the inputs themselves when both are off.

    >>> import torch
    >>> from slkd.losses.logits import transform_logits
    >>> student, teacher = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[3.0, 1.0, 2.0]])
    >>> _, swapped = transform_logits(student, teacher, torch.tensor([2]), swap=True)
    >>> swapped.tolist()  # the label (2) now holds the top logit
    [[2.0, 1.0, 3.0]]
    """
    check_logits("student_logits", student_logits)
    check_same_shape("teacher_logits", teacher_logits, "student_logits", student_logits)
    check_same_device("student_logits", student_logits, teacher_logits=teacher_logits, target=target)
    if swap:
        teacher_logits = swap_logits(teacher_logits, target)
    if standardize:
        student_logits = standardize_logits(student_logits, eps)
        teacher_logits = standardize_logits(teacher_logits, eps)
    return student_logits, teacher_logits
