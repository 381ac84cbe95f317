"""MLKD (Multi-Level Logit Distillation) loss, as the released MLKD code computes it.

Pure torch: no mdistiller import and no config object.  The function
:func:`mlkd_losses` reproduces the four losses returned by ``KD_ours.forward_train``
in the released MLKD fork of mdistiller (``mdistiller/distillers/KD_ours.py``),
including the quirks listed below, given the logits that the student and the
teacher produce on the weak and the strong augmentation of one batch.

Notation
--------
``B`` batch size, ``C`` number of classes, ``K`` number of temperatures,
``S = (T_base, 3, 5, 2, 6)`` the temperature list (``T_base`` is the configured
``KD.TEMPERATURE``: 4 on CIFAR-100, 1 in the released ImageNet configs),
``s_w, s_s`` student logits on the weak / strong view, ``t_w, t_s`` teacher
logits on the weak / strong view (all ``B x C``), ``y`` the labels (``B``).

For one temperature ``T``:

* ``kd_T(s, t) = T^2 * (1/B) sum_b KL(softmax(t_b/T) || softmax(s_b/T))``
  (a scalar, already averaged over the batch);
* ``cc_T(s, t) = sum_{ij} (G^t_ij - G^s_ij)^2 / C`` with
  ``G = softmax(z/T)^T softmax(z/T)`` (``C x C`` class Gram matrix), no ``T^2``;
* ``bc_T(s, t) = sum_{ij} (H^t_ij - H^s_ij)^2 / B`` with
  ``H = softmax(z/T) softmax(z/T)^T`` (``B x B`` sample Gram matrix), no ``T^2``.

Masks, from the teacher's weak-view probabilities at temperature 1,
``p = softmax(t_w)``:

* sample mask ``m_b = [max_c p_bc <= median_b(max_c p_bc)]``;
* class mask ``n_c = [sum_b p_bc <= median_c(sum_b p_bc)]``;

where ``median`` is numpy's default (linear interpolation) 50th percentile.
Because every term above is a scalar, the released ``(term * mask).mean()`` is
``term * f`` with ``f`` the fraction of ones in the mask:
``f_s = mean_b m_b``, ``f_c = mean_c n_c``.

The returned losses (``w_ce = ce_weight``, ``w_kd = kd_weight``)::

    loss_ce = w_ce * (CE(s_w, y) + CE(s_s, y))
    loss_kd = w_kd * f_s * sum_{T in S} kd_T(s_w, t_w)                 # weak block
            + w_kd * (kd_Tbase(s_s, t_s) + kd_3(s_s, t_s) + kd_5(s_s, t_s)
                      + kd_2(s_w, t_w) + kd_6(s_w, t_w))                # strong block
    loss_cc = w_kd * f_c * sum_{T in S} cc_T(s_w, t_w)
    loss_bc = w_kd * f_s * sum_{T in S} bc_T(s_w, t_w)

Quirks of the released code that are reproduced on purpose
-----------------------------------------------------------
1. The masks do not select samples or classes.  ``kd_loss``/``cc_loss``/
   ``bc_loss`` are called with ``reduce=True`` (the ``reduce=False`` arguments
   are commented out), so each returns a scalar; ``(scalar * mask).mean()``
   only rescales the scalar by the fraction of ones in the mask.  Every
   sample / class still contributes to the gradient.
2. The threshold test is ``<=`` against the median, so ties with the median
   are kept: with an odd batch the median sample itself is counted
   (``f_s = (B+1)/(2B)`` for distinct confidences), and ties can push ``f``
   above one half (up to 1, e.g. for a batch of one).
3. The "strong" KD block holds two *weak*-view terms (``T = 2`` and ``T = 6``),
   not strong-view ones, and they are unmasked; together with the weak block
   the weak-view ``T = 2, 6`` terms therefore weigh ``w_kd * (1 + f_s)``.
   The strong view is distilled only at ``T_base``, 3 and 5, unmasked.
4. The class-consistency and batch-consistency terms use the weak view only
   and carry no ``T^2`` factor, unlike the KD terms.
5. The batch-consistency term is masked by the *sample* mask (fraction
   ``f_s``), the class-consistency term by the *class* mask (``f_c``).
6. The released code also computes strong-view class- and batch-consistency
   sums (``loss_cc_strong``, ``loss_bc_strong``) but never adds them to the
   returned losses.  They do not affect training, so they are NOT computed
   here at all.
7. Both masks come from the teacher's weak-view softmax at temperature 1,
   whatever ``T_base`` is; the strong view never influences a mask.
8. The cross-entropy is plain (no label smoothing, although the released file
   imports a label-smoothing loss) and is applied to both views.

Differences of implementation (not of value)
--------------------------------------------
* The median is computed on the logits' device with torch (a sort and the
  same linear-interpolation formula numpy uses), not by a ``.cpu().numpy()``
  round trip; no host synchronisation happens.
* All temperatures are handled by stacked ``K x B x C`` tensor ops (one
  softmax / ``bmm`` per view) instead of a Python loop; each temperature's
  value is the same as computing it alone.
* Arithmetic is done in float32 (float64 if an input is float64) whatever the
  input dtype, with autocast disabled; the losses come back in that dtype.
* Teacher logits are treated as constants (detached); no gradient reaches them.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from slkd.errors import LossInputError
from slkd.losses.checks import (
    check_logits,
    check_same_device,
    check_same_shape,
    check_target,
    check_weight,
    temperature_values,
)
from slkd.losses.constants import constant
from slkd.losses.logits import standardize_logits

__all__ = [
    "DEFAULT_EXTRA_TEMPERATURES",
    "median_linear",
    "percentile_mask",
    "kd_term",
    "class_consistency",
    "batch_consistency",
    "mlkd_losses",
]

#: The four temperatures the released code uses after ``T_base``, in its order.
DEFAULT_EXTRA_TEMPERATURES: Tuple[float, float, float, float] = (3.0, 5.0, 2.0, 6.0)

# Index, in S = (T_base, *extra), of the temperatures that the "strong" KD block
# evaluates on the strong view (T_base, 3, 5) and on the weak view (2, 6).
_N_STRONG_VIEW_TEMPS = 3


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def median_linear(values: Tensor) -> Tensor:
    """Median of a 1-D tensor by numpy's default linear-interpolation rule.

    Equals ``numpy.percentile(values, 50)`` (``method='linear'``): with the
    values sorted ascending as ``v_0 <= ... <= v_{n-1}``, the virtual index is
    ``h = (n - 1) / 2``; for odd ``n`` the result is ``v_h``, for even ``n`` it
    is ``b - (b - a) * 0.5`` with ``a = v_{floor(h)}``, ``b = v_{floor(h)+1}``,
    which is the form numpy's ``_lerp`` uses for a weight ``>= 0.5`` (so the
    float32 result is bit-identical to numpy's float32 result).

    Args:
        values: shape ``(n,)``, floating point, ``n >= 1``.

    Returns:
        0-d tensor, same dtype and device as ``values``.  Computed on the
        device: no ``.cpu()``, ``.item()`` or numpy call.
    """
    if values.dim() != 1:
        raise ValueError(f"median_linear expects a 1-D tensor, got shape {tuple(values.shape)}")
    n = values.shape[0]
    if n == 0:
        raise ValueError("median_linear expects a non-empty tensor")
    if not values.is_floating_point():
        raise ValueError(f"median_linear expects a floating-point tensor, got {values.dtype}")
    ordered, _ = torch.sort(values)
    lo = (n - 1) // 2
    if n % 2 == 1:
        return ordered[lo]
    a = ordered[lo]
    b = ordered[lo + 1]
    return b - (b - a) * 0.5


def percentile_mask(values: Tensor) -> Tensor:
    """Boolean mask ``values <= median_linear(values)`` (ties kept).

    Args:
        values: shape ``(n,)``, floating point.

    Returns:
        bool tensor of shape ``(n,)`` on the same device.
    """
    return values.le(median_linear(values))


def _prepare_pair(
    student: Tensor, teacher: Tensor, temperatures: Sequence[float] | Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """Validate a (student, teacher) pair, cast both to the compute dtype, detach
    the teacher, and turn ``temperatures`` into a ``(K,)`` tensor."""
    check_logits("student", student)
    check_logits("teacher", teacher)
    check_same_shape("teacher", teacher, "student", student)
    check_same_device("student", student, teacher=teacher)
    dtype = _compute_dtype(student, teacher)
    temps = constant(temperature_values(temperatures), dtype, student.device)
    return student.to(dtype), teacher.detach().to(dtype), temps


def _scaled(logits: Tensor, temps: Tensor) -> Tensor:
    """``(B, C)`` logits and ``(K,)`` temperatures -> ``(K, B, C)`` of logits / T."""
    return logits.unsqueeze(0) / temps.view(-1, 1, 1)


def _kd_from_log_probs(log_p_student: Tensor, log_p_teacher: Tensor, temps: Tensor) -> Tensor:
    """``(K, B, C)`` log-probabilities -> ``(K,)`` of ``T^2 * mean_b KL(teacher || student)``.

    ``KL = sum_c p_t (log p_t - log p_s)``; a teacher probability of 0 (a logit
    of ``-inf``, or an underflow) contributes 0 (``0 log 0 = 0``, as ``F.kl_div`` does).
    """
    p_teacher = log_p_teacher.exp()
    kl = (p_teacher * (log_p_teacher - log_p_student)).masked_fill(p_teacher == 0, 0.0).sum(dim=-1)  # (K, B)
    return kl.mean(dim=-1) * temps.square()


def _class_gram(p: Tensor) -> Tensor:
    """``(K, B, C)`` -> ``(K, C, C)``: ``P^T P`` per temperature."""
    return torch.bmm(p.transpose(1, 2), p)


def _batch_gram(p: Tensor) -> Tensor:
    """``(K, B, C)`` -> ``(K, B, B)``: ``P P^T`` per temperature."""
    return torch.bmm(p, p.transpose(1, 2))


def kd_term(student: Tensor, teacher: Tensor, temperatures: Sequence[float] | Tensor) -> Tensor:
    """Instance KD term at each temperature (the released ``kd_loss``, reduced).

    ``out[k] = T_k^2 * (1/B) sum_b sum_c p^t_bc (log p^t_bc - log p^s_bc)``,
    ``p = softmax(logits / T_k)`` over classes.

    Args:
        student: ``(B, C)`` student logits (gradient flows).
        teacher: ``(B, C)`` teacher logits (detached).
        temperatures: a number, a sequence, or a 1-d numpy array or tensor of ``K``
            temperatures in ``[1e-4, 1e4]`` (read on the host).

    Returns:
    Example::

        >>> import torch
        >>> from slkd.losses import kd_term
        >>> s, t = torch.tensor([[1.0, 3.0, 0.5], [0.0, 1.0, 2.0]]), torch.tensor([[0.5, 2.0, 1.0], [1.0, 0.0, 0.0]])
        >>> kd_term(s, t, (1.0, 4.0))
        tensor([0.4729, 0.4953])
    """
    student, teacher, temps = _prepare_pair(student, teacher, temperatures)
    with torch.autocast(device_type=student.device.type, enabled=False):
        log_ps = F.log_softmax(_scaled(student, temps), dim=-1)
        with torch.no_grad():
            log_pt = F.log_softmax(_scaled(teacher, temps), dim=-1)
        return _kd_from_log_probs(log_ps, log_pt, temps)


def class_consistency(
    student: Tensor, teacher: Tensor, temperatures: Sequence[float] | Tensor
) -> Tensor:
    """Class-consistency term at each temperature (the released ``cc_loss``, reduced).

    ``P = softmax(logits / T_k)`` (``B x C``), ``G = P^T P`` (``C x C``),
    ``out[k] = sum_ij (G^t_ij - G^s_ij)^2 / C``.  No ``T^2`` factor.

    Args:
        student: ``(B, C)`` student logits (gradient flows).
        teacher: ``(B, C)`` teacher logits (detached).
        temperatures: a number, a sequence, or a 1-d numpy array or tensor of ``K``
            temperatures in ``[1e-4, 1e4]`` (read on the host).

    Returns:
    Example::

        >>> import torch
        >>> from slkd.losses import class_consistency
        >>> s, t = torch.tensor([[1.0, 3.0, 0.5], [0.0, 1.0, 2.0]]), torch.tensor([[0.5, 2.0, 1.0], [1.0, 0.0, 0.0]])
        >>> class_consistency(s, t, 4.0)
        tensor([0.0062])
    """
    return _consistency(student, teacher, temperatures, _class_gram, _cc_from_probs)


def batch_consistency(
    student: Tensor, teacher: Tensor, temperatures: Sequence[float] | Tensor
) -> Tensor:
    """Batch-consistency term at each temperature (the released ``bc_loss``, reduced).

    ``P = softmax(logits / T_k)`` (``B x C``), ``H = P P^T`` (``B x B``),
    ``out[k] = sum_ij (H^t_ij - H^s_ij)^2 / B``.  No ``T^2`` factor.

    Args:
        student: ``(B, C)`` student logits (gradient flows).
        teacher: ``(B, C)`` teacher logits (detached).
        temperatures: a number, a sequence, or a 1-d numpy array or tensor of ``K``
            temperatures in ``[1e-4, 1e4]`` (read on the host).

    Returns:
    Example::

        >>> import torch
        >>> from slkd.losses import batch_consistency
        >>> s, t = torch.tensor([[1.0, 3.0, 0.5], [0.0, 1.0, 2.0]]), torch.tensor([[0.5, 2.0, 1.0], [1.0, 0.0, 0.0]])
        >>> batch_consistency(s, t, [4.0])
        tensor([0.0002])
    """
    return _consistency(student, teacher, temperatures, _batch_gram, _bc_from_probs)


def _consistency(student, teacher, temperatures, gram, from_probs) -> Tensor:
    """``from_probs(P_s, gram(P_t))`` per temperature, in float32 outside autocast."""
    student, teacher, temps = _prepare_pair(student, teacher, temperatures)
    with torch.autocast(device_type=student.device.type, enabled=False):
        p_s = F.softmax(_scaled(student, temps), dim=-1)
        with torch.no_grad():
            target_gram = gram(F.softmax(_scaled(teacher, temps), dim=-1))
        return from_probs(p_s, target_gram)


def _cc_from_probs(p_s: Tensor, g_t: Tensor) -> Tensor:
    num_classes = p_s.shape[-1]
    return (g_t - _class_gram(p_s)).square().sum(dim=(1, 2)) / num_classes


def _bc_from_probs(p_s: Tensor, h_t: Tensor) -> Tensor:
    batch_size = p_s.shape[-2]
    return (h_t - _batch_gram(p_s)).square().sum(dim=(1, 2)) / batch_size


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
def _validate(
    student_weak: Tensor,
    student_strong: Tensor,
    teacher_weak: Tensor,
    teacher_strong: Tensor,
    target: Tensor,
) -> None:
    """The checks of :mod:`slkd.losses.checks`: four ``(B, C)`` floating logits of one shape
    on one device, and ``(B,)`` integer labels in ``[0, C)``."""
    named = {
        "student_strong": student_strong,
        "teacher_weak": teacher_weak,
        "teacher_strong": teacher_strong,
    }
    check_logits("student_weak", student_weak)
    for name, logits in named.items():
        check_logits(name, logits)
        check_same_shape(name, logits, "student_weak", student_weak)
    check_same_device("student_weak", student_weak, **named)
    check_target(target, student_weak, "student_weak")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# --------------------------------------------------------------------------- #
# the loss
# --------------------------------------------------------------------------- #
def mlkd_losses(
    student_weak: Tensor,
    student_strong: Tensor,
    teacher_weak: Tensor,
    teacher_strong: Tensor,
    target: Tensor,
    *,
    base_temperature: float = 4.0,
    extra_temperatures: Sequence[float] = DEFAULT_EXTRA_TEMPERATURES,
    ce_weight: float = 0.1,
    kd_weight: float = 0.9,
    standardize: bool = False,
) -> Dict[str, Tensor]:
    """MLKD losses exactly as the released ``KD_ours.forward_train`` returns them.

    See the module docstring for the formulas and the reproduced quirks. With
    ``standardize`` the KD terms ``kd_T`` (both blocks) take z-scored logits
    (:func:`slkd.losses.logits.standardize_logits`) of student and teacher, as the
    logit-standardization authors' MLKD does with ``LOGIT_STAND``; the masks, the class-
    and batch-consistency terms and the cross-entropy keep the raw logits.

    Args:
        student_weak: ``(B, C)`` student logits on the weak view.
        student_strong: ``(B, C)`` student logits on the strong view.
        teacher_weak: ``(B, C)`` teacher logits on the weak view (constant).
        teacher_strong: ``(B, C)`` teacher logits on the strong view (constant).
        target: ``(B,)`` integer labels (any integer dtype) in ``[0, C)``.
        base_temperature: ``T_base`` (``cfg.KD.TEMPERATURE``; 4 on CIFAR-100).
        extra_temperatures: the four further temperatures, in the released order
            ``(3, 5, 2, 6)``: the first two join ``T_base`` in the strong-view
            part of the "strong" block, the last two are the weak-view terms that
            the "strong" block holds.
        ce_weight: ``cfg.KD.LOSS.CE_WEIGHT`` (0.1 by default, as in the fork).
        kd_weight: ``cfg.KD.LOSS.KD_WEIGHT`` (0.9 by default); also weighs the
            class- and batch-consistency terms.
        standardize: z-score the logits of the KD terms (``LOGITS.STANDARDIZE``).

    Returns:
        ``{"loss_ce", "loss_kd", "loss_cc", "loss_bc"}``, each a 0-d tensor in
        float32 (float64 if an input is float64), whatever the input dtype.
        ``loss_kd`` is the weak block plus the strong block.  The strong-view
        class/batch-consistency sums of the released code are not computed
        (they are never added to its losses).

    Example (the same logits for both views)::

        >>> import torch
        >>> from slkd.losses import mlkd_losses
        >>> s, t = torch.tensor([[1.0, 3.0, 0.5], [0.0, 1.0, 2.0]]), torch.tensor([[0.5, 2.0, 1.0], [1.0, 0.0, 0.0]])
        >>> losses = mlkd_losses(s, s, t, t, torch.tensor([1, 2]))
        >>> {name: round(value.item(), 4) for name, value in losses.items()}
        {'loss_ce': 0.0604, 'loss_kd': 3.341, 'loss_cc': 0.031, 'loss_bc': 0.002}
    """
    _validate(student_weak, student_strong, teacher_weak, teacher_strong, target)
    (t_base, *wrong) = temperature_values(base_temperature, "base_temperature")
    if wrong:
        raise LossInputError(f"base_temperature must be one temperature, got {len(wrong) + 1}: {base_temperature!r}")
    extras = temperature_values(extra_temperatures, "extra_temperatures")
    if len(extras) != 4:
        raise LossInputError(
            "extra_temperatures must hold exactly four temperatures (released order "
            f"(3, 5, 2, 6)), got {len(extras)}: {extras!r}"
        )
    w_ce = check_weight("ce_weight", ce_weight)
    w_kd = check_weight("kd_weight", kd_weight)

    dtype = _compute_dtype(student_weak, student_strong, teacher_weak, teacher_strong)
    device = student_weak.device
    # Keep float32 arithmetic even inside an autocast region (bmm would be cast down).
    with torch.autocast(device_type=device.type, enabled=False):
        s_w = student_weak.to(dtype)
        s_s = student_strong.to(dtype)
        # made once per device: no host-to-device copy inside the step
        temps_all = constant((t_base, *extras), dtype, device)
        temps_strong = temps_all[:_N_STRONG_VIEW_TEMPS]  # (T_base, 3, 5)

        with torch.no_grad():
            t_w = teacher_weak.detach().to(dtype)
            t_s = teacher_strong.detach().to(dtype)
            batch_size, num_classes = t_w.shape

            # Masks from the teacher's weak-view softmax at T = 1.
            p1 = F.softmax(t_w, dim=1)
            sample_frac = percentile_mask(p1.amax(dim=1)).to(dtype).mean()
            class_frac = percentile_mask(p1.sum(dim=0)).to(dtype).mean()

            # Teacher quantities at every temperature, (K, B, C); the KD terms' from the
            # z-scored logits with ``standardize``, the Gram matrices' from the raw ones.
            kd_t_w, kd_t_s = (standardize_logits(t_w), standardize_logits(t_s)) if standardize else (t_w, t_s)
            log_pt_w = F.log_softmax(_scaled(kd_t_w, temps_all), dim=-1)
            log_pt_s = F.log_softmax(_scaled(kd_t_s, temps_strong), dim=-1)
            p_t_w = F.softmax(_scaled(t_w, temps_all), dim=-1) if standardize else log_pt_w.exp()
            g_t = _class_gram(p_t_w)  # (K, C, C)
            h_t = _batch_gram(p_t_w)  # (K, B, B)

        kd_s_w, kd_s_s = (standardize_logits(s_w), standardize_logits(s_s)) if standardize else (s_w, s_s)
        log_ps_w = F.log_softmax(_scaled(kd_s_w, temps_all), dim=-1)  # (5, B, C)
        log_ps_s = F.log_softmax(_scaled(kd_s_s, temps_strong), dim=-1)  # (3, B, C)
        p_s_w = F.softmax(_scaled(s_w, temps_all), dim=-1) if standardize else log_ps_w.exp()

        kd_weak = _kd_from_log_probs(log_ps_w, log_pt_w, temps_all)  # (5,)
        kd_strong = _kd_from_log_probs(log_ps_s, log_pt_s, temps_strong)  # (3,)

        weak_block = w_kd * sample_frac * kd_weak.sum()
        strong_block = w_kd * (kd_strong.sum() + kd_weak[_N_STRONG_VIEW_TEMPS:].sum())

        loss_cc = w_kd * class_frac * _cc_from_probs(p_s_w, g_t).sum()
        loss_bc = w_kd * sample_frac * _bc_from_probs(p_s_w, h_t).sum()
        target = target.long()
        loss_ce = w_ce * (F.cross_entropy(s_w, target) + F.cross_entropy(s_s, target))

    return {
        "loss_ce": loss_ce,
        "loss_kd": weak_block + strong_block,
        "loss_cc": loss_cc,
        "loss_bc": loss_bc,
    }
