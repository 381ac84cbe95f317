"""Swapped Logit Distillation (Limantoro et al., Multimedia Systems 2025), pure torch.

Notation, for one view: student logits ``z`` and teacher logits ``t`` of shape ``(N, C)``,
labels ``y`` of shape ``(N,)``, temperatures ``T_1..T_K``, ``p_T(u) = softmax(u / T)``.

``swap(u, y)``: in each row, with ``m = argmax u`` (first index on ties), exchange ``u_y``
and ``u_m`` when ``m != y``. The label then holds the top logit; the rest of the row is
untouched, so the shape of the non-target distribution is kept.

Per row, summed over temperatures with equal weight::

    L_TS = sum_T T^2 KL( p_T(swap(t, y)) || p_T(z) )      teacher swap
    L_SS = sum_T T^2 KL( p_T(swap(z, y)) || p_T(z) )      student as pseudo-teacher

and the loss of a view is ``mean_rows(L_TS + [epoch > gamma] L_SS)``.

How it is computed. Softmax commutes with a permutation of the row, so
``log p_T(swap(z, y)) = swap(log p_T(z), y)`` and ``L_SS`` only involves the two exchanged
columns: ``L_SS = sum_T T^2 (q_m - q_y)(log q_m - log q_y)`` with ``q = p_T(z)``, where
``log q_m - log q_y = (z_m - z_y) / T``. Student and teacher rows and all temperatures are
stacked into one ``(2, K, N, C)`` tensor that takes one log-softmax, and the gradient is
written in closed form (``dL_TS/dz = sum_T T (q - p)``, and the two-column terms of
``L_SS``; see ``_SwappedKL``), so a forward and backward pass is a few dozen small kernels
whatever ``K`` is (two with ``fused=True``, :mod:`slkd.losses.sld_fused`), with no
host-device synchronisation. The arithmetic always runs in float32 (or float64 for float64 inputs),
also under autocast. ``tests/test_losses_sld.py`` checks values and gradients against a
literal float64 implementation.

The teacher logits are a constant target, as for a teacher in eval mode: no gradient flows
into them.
"""

from __future__ import annotations

import warnings
from types import MappingProxyType
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn

from slkd.losses.checks import (
    check_logits,
    check_same_device,
    check_same_shape,
    check_target,
    check_temperature_tensor,
    temperature_values,
)
from slkd.losses.constants import constant

__all__ = ["DEFAULT_TEMPERATURES", "SLD_DEFAULTS", "SLDLoss", "SLDTerms", "sld_loss", "sld_terms", "swap_logits"]

#: The released code's settings, the one place they are written: the keys of the ``SLD``
#: config node (:func:`slkd.host.config.sld_node`), the loss's keyword defaults below, the
#: benchmark's settings and the README's table all come from here. Whether the teacher row
#: is swapped is the ``LOGITS.TEACHER_SWAP`` setting, on for SLD (``teacher_swap=True``).
SLD_DEFAULTS = MappingProxyType(
    {
        "CE_WEIGHT": 0.1,  # cross-entropy weight, summed over views
        "KD_WEIGHT": 0.9,  # SLD loss weight, summed over views
        "TEMPERATURES": (1.0, 2.0, 3.0, 4.0, 5.0, 6.0),  # summed with equal weight
        "GAMMA": 150,  # the pseudo-teacher term is on while epoch > GAMMA
        "STUDENT_SWAP": True,  # False: no pseudo-teacher term
        "DETACH_PSEUDO_TEACHER": False,  # stop the gradient through the swapped student target
    }
)
DEFAULT_TEMPERATURES = SLD_DEFAULTS["TEMPERATURES"]
DEFAULT_GAMMA = SLD_DEFAULTS["GAMMA"]


def swap_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Exchange, in each row, the label's logit with the row's largest logit.

    Args:
        logits: ``(N, C)`` floating tensor, any float dtype.
        target: ``(N,)`` integer labels in ``[0, C)``.

    Returns:
        ``(N, C)`` tensor of ``logits``'s dtype: ``out[i, y_i] = logits[i, m_i]`` and
        ``out[i, m_i] = logits[i, y_i]`` with ``m_i = argmax(logits[i])`` (first index on
        ties); other entries and rows with ``m_i == y_i`` are copied unchanged.
        Differentiable (the gradient is the same permutation), and free of host-device
        synchronisation.

    Example (label 0; the top logit, 3.0, sits in column 2)::

        >>> import torch
        >>> from slkd.losses import swap_logits
        >>> swap_logits(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([0]))
        tensor([[3., 2., 1.]])
    """
    check_logits("logits", logits)
    check_target(target, logits)
    return logits.gather(1, _swap_permutation(logits, target))


def _swap_permutation(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` column indices that realise the swap as ``logits.gather(1, perm)``."""
    num_rows, num_classes = logits.shape
    top = logits.argmax(dim=1).view(-1, 1)
    label = target.view(-1, 1).to(top.dtype)
    columns = torch.arange(num_classes, device=logits.device).expand(num_rows, num_classes)
    perm = torch.where(columns == label, top, columns)
    return torch.where(columns == top, label, perm)


class SLDTerms(NamedTuple):
    """Per-row loss terms of one view, and how often each swap fired.

    ``teacher_swap_loss`` (``L_TS``) and ``student_swap_loss`` (``L_SS``) are ``(N,)``; the two
    rates are 0-d tensors: the share of rows whose teacher (student) top class is not the
    label. All stay on device. (``teacher_swap`` and ``student_swap``, the losses' names
    before 0.2, still read them, with a DeprecationWarning.)
    """

    teacher_swap_loss: torch.Tensor
    student_swap_loss: torch.Tensor
    teacher_swap_rate: torch.Tensor
    student_swap_rate: torch.Tensor

    @property
    def teacher_swap(self) -> torch.Tensor:
        _warn_renamed("SLDTerms.teacher_swap", "SLDTerms.teacher_swap_loss")
        return self.teacher_swap_loss

    @property
    def student_swap(self) -> torch.Tensor:
        _warn_renamed("SLDTerms.student_swap", "SLDTerms.student_swap_loss")
        return self.student_swap_loss


def _warn_renamed(old: str, new: str) -> None:
    warnings.warn(f"{old} is renamed {new}; the old name goes in the next release", DeprecationWarning, stacklevel=3)


def _renamed_switch(function: str, renamed: dict, old: str, new: str, value: bool) -> bool:
    """``value``, or the one given under ``old`` (with a DeprecationWarning); TypeError for any
    other keyword, as Python gives for an unknown one."""
    unknown = sorted(set(renamed) - {old})
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    if old in renamed:
        _warn_renamed(f"{function}({old}=...)", f"{function}({new}=...)")
        return renamed[old]
    return value


def sld_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperatures: torch.Tensor,
    *,
    teacher_swap: bool = True,
    student_swap: bool = True,
    detach_pseudo_teacher: bool = False,
    fused: bool = False,
    **renamed,
) -> SLDTerms:
    """Per-row ``L_TS`` and ``L_SS`` (see the module docstring).

    Args:
        student_logits: ``(N, C)``, gradient flows here.
        teacher_logits: ``(N, C)``, a constant target.
        target: ``(N,)`` integer labels.
        temperatures: ``(K,)`` positive floats on the logits' device.
        teacher_swap: swap the teacher row before the softmax (False: plain
            multi-temperature KD against the raw teacher).
        student_swap: compute ``L_SS``; when False, ``student_swap_loss`` is zeros. (Its name
            before 0.2, ``pseudo_teacher=``, still works, with a DeprecationWarning.)
        detach_pseudo_teacher: treat ``p_T(swap(z, y))`` as a constant in ``L_SS``.
        fused: compute with the two Triton kernels of :mod:`slkd.losses.sld_fused` (CUDA
            tensors; the same values up to float rounding, two launches instead of dozens).

    Example::

        >>> import torch
        >>> from slkd.losses import sld_terms
        >>> z, t, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([0])
        >>> terms = sld_terms(z, t, y, torch.tensor([1.0, 4.0]))
        >>> terms.student_swap_loss, terms.teacher_swap_rate
        (tensor([0.]), tensor(1.))
    """
    student_swap = _renamed_switch("sld_terms", renamed, "pseudo_teacher", "student_swap", student_swap)
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    check_same_shape("teacher_logits", teacher_logits, "student_logits", student_logits)
    check_same_device("student_logits", student_logits, teacher_logits=teacher_logits)
    check_target(target, student_logits, "student_logits")
    check_temperature_tensor(temperatures, student_logits)
    compute_dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    device_type = student_logits.device.type
    if fused:
        return _fused_terms(
            student_logits, teacher_logits, target, temperatures.to(compute_dtype),
            teacher_swap, student_swap, detach_pseudo_teacher,
        )  # fmt: skip
    with torch.autocast(device_type=device_type, enabled=False):
        ts_rows, ss_rows, top = _SwappedKL.apply(
            student_logits,
            teacher_logits,
            target,
            temperatures.to(compute_dtype),
            teacher_swap,
            student_swap,
            detach_pseudo_teacher,
        )
    student_rate, teacher_rate = (top.ne(target).sum(dim=1, dtype=compute_dtype) / target.shape[0]).unbind()
    return SLDTerms(
        teacher_swap_loss=ts_rows,
        student_swap_loss=ss_rows,
        teacher_swap_rate=teacher_rate,
        student_swap_rate=student_rate,
    )


def _fused_terms(student_logits, teacher_logits, target, temperatures, teacher_swap, pseudo_teacher, detach):
    from slkd.losses.sld_fused import FusedSwappedKL, check_fused_inputs

    check_fused_inputs(student_logits)
    terms, swapped = FusedSwappedKL.apply(
        student_logits, teacher_logits, target, temperatures, teacher_swap, pseudo_teacher, detach
    )
    teacher_rate, student_rate = swapped.mean(dim=1).unbind()
    ts_rows, ss_rows = terms.unbind()
    return SLDTerms(
        teacher_swap_loss=ts_rows,
        student_swap_loss=ss_rows,
        teacher_swap_rate=teacher_rate,
        student_swap_rate=student_rate,
    )


class _SwappedKL(torch.autograd.Function):
    """Per-row ``L_TS`` and ``L_SS`` with a closed-form gradient, all temperatures at once.

    ``apply(student (M, C), teacher (M, C), target (M,), temperatures (K,), teacher_swap,
    pseudo_teacher, detach)`` returns ``L_TS`` and ``L_SS`` per row, ``(M,)`` each (``L_SS``
    zeros when ``pseudo_teacher`` is False), and ``top (2, M)``, the student's and the teacher's
    argmax (first index on ties). Student and teacher are stacked into one ``(2, M, C)``
    tensor, the teacher swapped in place with two scatters, and one log-softmax covers both
    networks and all temperatures, ``(2, K, M, C)``. With ``q = p_T(z)``, ``p`` the swapped
    teacher's, ``a_T = q_m - q_y`` and ``d = z_m - z_y`` (so ``log q_m - log q_y = d / T``)::

        L_TS = sum_T T^2 sum_c p (log p - log q)      dL_TS/dz = sum_T T (q - p)
        L_SS = d sum_T T a_T
        dL_SS/dz = -d sum_T a_T q + e_m (d sum_T q_m + sum_T T a_T) - e_y (d sum_T q_y + sum_T T a_T)

    and with the pseudo-teacher detached ``dL_SS/dz = sum_T T a_T (e_m - e_y)``. The gradient
    flows to ``student`` only, in its dtype.
    """

    @staticmethod
    def forward(ctx, student, teacher, target, temperatures, teacher_swap, pseudo_teacher, detach):
        num_rows = student.shape[0]
        target = target.long()
        logits = torch.stack((student.detach(), teacher.detach())).to(temperatures.dtype)  # (2, M, C)
        top_value, top = logits.max(dim=2)  # (2, M): first index on ties
        label_value = logits.gather(2, target.view(1, -1, 1).expand(2, num_rows, 1))  # (2, M, 1)
        if teacher_swap:
            teacher_row = logits[1]
            teacher_row.scatter_(1, top[1].view(-1, 1), label_value[1])
            teacher_row.scatter_(1, target.view(-1, 1), top_value[1].view(-1, 1))
        log_probs = torch.log_softmax(logits.unsqueeze(1) / temperatures.view(1, -1, 1, 1), dim=-1)
        probs = log_probs.exp()  # (2, K, M, C): [0] student q, [1] swapped teacher p
        # a teacher probability of 0 (a logit of -inf, or an underflow) adds 0, as in kl_div
        kl = (probs[1] * (log_probs[1] - log_probs[0])).masked_fill_(probs[1] == 0, 0.0).sum(dim=-1)  # (K, M)
        ts_rows = torch.mv(kl.t(), temperatures * temperatures)
        index = gap = q_pair = gap_prob = t_gap = None
        if pseudo_teacher:
            gap = top_value[0] - label_value[0, :, 0]  # z_m - z_y
            index = torch.stack((top[0], target), dim=1)  # (M, 2): columns m and y
            q_pair = probs[0].gather(-1, index.expand(temperatures.shape[0], -1, -1))  # (K, M, 2)
            gap_prob = q_pair[..., 0] - q_pair[..., 1]  # a_T, (K, M)
            t_gap = torch.mv(gap_prob.t(), temperatures)  # sum_T T a_T
            ss_rows = gap * t_gap
        else:
            ss_rows = torch.zeros_like(ts_rows)
        ctx.pseudo_teacher = pseudo_teacher
        ctx.detach = detach
        ctx.student_dtype = student.dtype
        if detach:  # the detached gradient needs only sum_T T a_T
            gap = q_pair = gap_prob = None
        ctx.save_for_backward(probs, temperatures, index, gap, q_pair, gap_prob, t_gap)
        ctx.mark_non_differentiable(top)
        return ts_rows, ss_rows, top

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ts, grad_ss, _grad_top):
        probs, temperatures, index, gap, q_pair, gap_prob, t_gap = ctx.saved_tensors
        grad_ts, grad_ss = grad_ts.to(probs.dtype), grad_ss.to(probs.dtype)
        # dense part: sum_T (w_q q_T + w_p p_T), w_q = T g_ts - g_ss d a_T, w_p = -T g_ts
        scaled = torch.outer(temperatures, grad_ts)  # (K, M)
        q_weight = scaled
        if ctx.pseudo_teacher and not ctx.detach:
            q_weight = torch.addcmul(scaled, gap_prob, grad_ss * gap, value=-1.0)
        weights = torch.stack((q_weight, scaled.neg()))  # (2, K, M)
        grad = (weights.unsqueeze(-1) * probs).sum(dim=(0, 1))
        if ctx.pseudo_teacher:
            if ctx.detach:
                coefficient = (grad_ss * t_gap).unsqueeze(1)  # the same for m and y
                pair = torch.cat((coefficient, coefficient.neg()), dim=1)
            else:
                pair = torch.addcmul(t_gap.unsqueeze(1), q_pair.sum(dim=0), gap.unsqueeze(1))
                pair = pair * torch.stack((grad_ss, grad_ss.neg()), dim=1)
            grad.scatter_add_(1, index, pair)  # + at m, - at y (the two cancel when m == y)
        return grad.to(ctx.student_dtype), None, None, None, None, None, None


def sld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    epoch: int,
    *,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    gamma: int = DEFAULT_GAMMA,
    teacher_swap: bool = True,
    student_swap: bool = SLD_DEFAULTS["STUDENT_SWAP"],
    detach_pseudo_teacher: bool = SLD_DEFAULTS["DETACH_PSEUDO_TEACHER"],
    fused: bool = False,
) -> torch.Tensor:
    """SLD loss of one view, unweighted: ``mean_rows(L_TS + [epoch > gamma] L_SS)``.

    Args:
        student_logits: ``(N, C)`` student logits (any float dtype; gradient flows).
        teacher_logits: ``(N, C)`` teacher logits (constant target).
        target: ``(N,)`` integer labels in ``[0, C)``.
        epoch: current epoch, counted from 1 as in mdistiller's trainer.
        temperatures: a number, a sequence, or a 1-d numpy array or tensor of temperatures in
            ``[1e-4, 1e4]`` (read on the host); the terms are summed, not averaged.
        gamma: ``L_SS`` is on while ``epoch > gamma`` (a step, no ramp).
        teacher_swap: False gives plain multi-temperature KD against the raw teacher.
        student_swap: False never adds ``L_SS``.
        detach_pseudo_teacher: stop the gradient through the swapped student target.
        fused: use the fused Triton kernels (see :func:`sld_terms`).

    Returns:
        0-d float32 tensor (float64 for float64 inputs).

    Example (with label 0 the swapped teacher is the student; with label 1 it is not, and
    past ``gamma`` the swapped student adds ``L_SS``)::

        >>> import torch
        >>> from slkd.losses import sld_loss
        >>> z, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> sld_loss(z, t, torch.tensor([0]), epoch=1, temperatures=(1.0, 4.0))
        tensor(0.)
        >>> sld_loss(z, t, torch.tensor([1]), epoch=1, temperatures=4.0).round(decimals=4)
        tensor(1.9593)
        >>> sld_loss(z, t, torch.tensor([1]), epoch=200, temperatures=4.0).round(decimals=4)
        tensor(3.9187)
    """
    compute_dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    check_logits("student_logits", student_logits)
    temps = constant(temperature_values(temperatures), compute_dtype, student_logits.device)
    terms = sld_terms(
        student_logits,
        teacher_logits,
        target,
        temps,
        teacher_swap=teacher_swap,
        student_swap=student_swap and epoch > gamma,
        detach_pseudo_teacher=detach_pseudo_teacher,
        fused=fused,
    )
    return (terms.teacher_swap_loss + terms.student_swap_loss).mean()


class SLDLoss(nn.Module):
    """:func:`sld_loss` with its settings held, e.g. ``SLDLoss(gamma=150)(z, t, y, epoch)``.

    The temperatures live in non-persistent buffers (float64, and float32 for float32
    arithmetic), so they follow ``.to(device)`` and cost no host-to-device copy per call. A
    cast to a 16-bit float (``.half()``, ``.to(torch.bfloat16)``) leaves them in their
    float32/float64 dtype, exact: 16 bits would round a temperature of 0.3 to 0.2998.
    ``fused=True`` computes with the Triton kernels of :mod:`slkd.losses.sld_fused` (CUDA
    tensors).

    Example::

        >>> import torch
        >>> from slkd.losses import SLDLoss
        >>> criterion = SLDLoss(temperatures=(1.0, 4.0), gamma=10)
        >>> z, t, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([1])
        >>> criterion(z, t, y, epoch=11).round(decimals=4), criterion.student_swap_on(11)
        (tensor(6.9651), True)
    """

    def __init__(
        self,
        temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
        gamma: int = DEFAULT_GAMMA,
        teacher_swap: bool = True,
        student_swap: bool = SLD_DEFAULTS["STUDENT_SWAP"],
        detach_pseudo_teacher: bool = SLD_DEFAULTS["DETACH_PSEUDO_TEACHER"],
        fused: bool = False,
    ) -> None:
        super().__init__()
        self._temperature_values = temperature_values(temperatures)
        values = torch.tensor(self._temperature_values, dtype=torch.float64)
        self.register_buffer("temperatures", values, persistent=False)
        self.register_buffer("temperatures_float32", values.float(), persistent=False)
        self.gamma = int(gamma)
        self.teacher_swap = bool(teacher_swap)
        self.student_swap = bool(student_swap)
        self.detach_pseudo_teacher = bool(detach_pseudo_teacher)
        self.fused = bool(fused)

    def _apply(self, fn, recurse=True):
        """``nn.Module``'s, then a temperature buffer cast to a 16-bit float is made again,
        exact, in the dtype it had (on the device it moved to)."""
        kept = {name: getattr(self, name).dtype for name in ("temperatures", "temperatures_float32")}
        super()._apply(fn, recurse)
        for name, dtype in kept.items():
            buffer = getattr(self, name)
            if buffer.dtype not in (torch.float32, torch.float64):
                setattr(self, name, torch.tensor(self._temperature_values, dtype=dtype, device=buffer.device))
        return self

    def student_swap_on(self, epoch: int) -> bool:
        """Whether ``L_SS`` is part of the loss at ``epoch``."""
        return self.student_swap and epoch > self.gamma

    def pseudo_teacher_on(self, epoch: int) -> bool:
        """:meth:`student_swap_on`'s name before 0.2 (DeprecationWarning)."""
        _warn_renamed("SLDLoss.pseudo_teacher_on", "SLDLoss.student_swap_on")
        return self.student_swap_on(epoch)

    def terms(self, student_logits, teacher_logits, target, epoch: int) -> SLDTerms:
        """Per-row terms (see :func:`sld_terms`), e.g. for a loss over several views."""
        check_logits("student_logits", student_logits)
        float64 = student_logits.dtype == torch.float64
        return sld_terms(
            student_logits,
            teacher_logits,
            target,
            self.temperatures if float64 else self.temperatures_float32,
            teacher_swap=self.teacher_swap,
            student_swap=self.student_swap_on(epoch),
            detach_pseudo_teacher=self.detach_pseudo_teacher,
            fused=self.fused,
        )

    def forward(self, student_logits, teacher_logits, target, epoch: int) -> torch.Tensor:
        terms = self.terms(student_logits, teacher_logits, target, epoch)
        return (terms.teacher_swap_loss + terms.student_swap_loss).mean()

    def extra_repr(self) -> str:
        temps = ", ".join(f"{t:g}" for t in self._temperature_values)
        return (
            f"temperatures=({temps}), gamma={self.gamma}, teacher_swap={self.teacher_swap}, "
            f"student_swap={self.student_swap}, "
            f"detach_pseudo_teacher={self.detach_pseudo_teacher}, fused={self.fused}"
        )
