"""The SLD loss as two fused Triton kernels: one launch forward, one backward.

Same quantities as :func:`slkd.losses.sld.sld_terms` (see that module for the notation), for
``M`` rows of ``C`` classes and ``K`` temperatures. One Triton program handles one row:

* it loads the student row ``z`` and teacher row ``t`` once, finds ``m = argmax z``,
  ``argmax t`` (first index on ties) and swaps the teacher row in registers;
* it loops over the temperatures and accumulates, with ``q = p_T(z)``, ``p = p_T(swap(t, y))``,
  ``a_T = q_m - q_y`` and ``d = z_m - z_y``::

      L_TS = sum_T T^2 sum_c p (log p - log q)          dL_TS/dz = sum_T T (q - p)
      L_SS = sum_T T a_T d                              (= sum_T T^2 a_T (log q_m - log q_y))
      dL_SS/dz = -d sum_T a_T q + e_m (d sum_T q_m + sum_T T a_T) - e_y (d sum_T q_y + sum_T T a_T)

  (with the pseudo-teacher detached: ``dL_SS/dz = sum_T T a_T (e_m - e_y)``);
* it writes the two per-row terms, whether each swap fired, and the two ``(C,)`` gradient
  rows. The backward kernel scales them by the incoming per-row gradients.

So a forward and backward pass over both views is two kernel launches whatever ``K`` is
(``K`` is a compile-time constant of the forward kernel: Triton builds it once per ``K``),
instead of the eager loss's 45 torch ops, whose launches are what bound it on a GPU at
CIFAR sizes. The arithmetic is float32 (float64 for float64 inputs); the result equals the
eager loss up to float rounding. It runs on CUDA tensors, and on CPU tensors in Triton's
interpreter (``TRITON_INTERPRET=1`` set before this module is imported), which is how the
tests check it against the float64 reference.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = None

#: Largest class count one program keeps in registers.
MAX_CLASSES = 4096


def fused_available() -> str | None:
    """``None`` when the fused loss can run here, else why not (one line)."""
    if triton is None:
        return "Triton is not installed (it comes with torch's Linux CUDA wheels: pip install triton)"
    return None


def runs_on(device: torch.device) -> bool:
    """Whether the kernels run on ``device``: CUDA, or any device in the interpreter."""
    return device.type == "cuda" or INTERPRETED


def check_fused_inputs(logits: torch.Tensor) -> None:
    """ValueError naming the fix when the fused kernels cannot take ``logits``."""
    reason = fused_available()
    if reason:
        raise ValueError(f"the fused SLD loss needs Triton: {reason}; or use the eager loss (fused=False, SLKD.FUSED_LOSS False)")
    if not runs_on(logits.device):
        raise ValueError(
            f"the fused SLD loss runs on CUDA tensors, got {logits.device.type}: use the eager loss "
            "there (fused=False, SLKD.FUSED_LOSS False)"
        )
    if logits.shape[1] > MAX_CLASSES:
        raise ValueError(
            f"the fused SLD loss takes at most {MAX_CLASSES} classes, got {logits.shape[1]}: use "
            "the eager loss (fused=False, SLKD.FUSED_LOSS False)"
        )


#: Whether the kernels below were built for Triton's CPU interpreter (decided at import).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


if triton is not None:

    @triton.jit
    def _sld_forward_kernel(
        z_ptr, t_ptr, y_ptr, temps_ptr,
        terms_ptr, swapped_ptr, grad_ts_ptr, grad_ss_ptr,
        num_rows, num_classes, z_stride, t_stride,
        NUM_TEMPS: tl.constexpr, BLOCK: tl.constexpr, TEACHER_SWAP: tl.constexpr,
        PSEUDO: tl.constexpr, DETACH: tl.constexpr, NEEDS_GRAD: tl.constexpr, FP64: tl.constexpr,
    ):  # fmt: skip
        """Row ``program_id(0)``: terms ``(2, M)``, swap flags ``(2, M)``, gradient rows ``(M, C)``."""
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        valid = cols < num_classes
        # padded columns hold 0 and are masked out of every max, sum and store
        z = tl.load(z_ptr + row * z_stride + cols, mask=valid, other=0.0)
        t = tl.load(t_ptr + row * t_stride + cols, mask=valid, other=0.0)
        if FP64:
            z = z.to(tl.float64)
            t = t.to(tl.float64)
        else:
            z = z.to(tl.float32)
            t = t.to(tl.float32)
        dtype = z.dtype
        label = tl.load(y_ptr + row).to(tl.int32)
        is_label = cols == label
        label_ok = (label >= 0) & (label < num_classes)

        z_valid = tl.where(valid, z, float("-inf"))
        z_top = tl.argmax(z_valid, 0, tie_break_left=True)
        z_max = tl.max(z_valid, 0)
        z_label = tl.sum(tl.where(is_label, z, 0.0), 0)
        t_valid = tl.where(valid, t, float("-inf"))
        t_top = tl.argmax(t_valid, 0, tie_break_left=True)
        t_max = tl.max(t_valid, 0)
        if TEACHER_SWAP:
            t_label = tl.sum(tl.where(is_label, t, 0.0), 0)
            t = tl.where(is_label, t_max, tl.where(cols == t_top, t_label, t))
        gap = z_max - z_label  # z_m - z_y, zero when the student is right
        is_top = cols == z_top

        # per-column accumulators over the temperatures, reduced once after the loop
        kl = tl.zeros((BLOCK,), dtype)  # sum_T T^2 p (log p - log q)
        grad_ts = tl.zeros((BLOCK,), dtype)  # sum_T T (q - p)
        sum_t_gap = tl.zeros((), dtype)  # sum_T T a_T
        q_sum = tl.zeros((BLOCK,), dtype)  # sum_T q
        weighted_q = tl.zeros((BLOCK,), dtype)  # sum_T a_T q
        for k in range(NUM_TEMPS):
            temperature = tl.load(temps_ptr + k).to(dtype)
            inv = 1.0 / temperature
            # q = softmax(z / T) and log q
            zs = z * inv
            z_shift = z_max * inv
            ez = tl.where(valid, tl.exp(zs - z_shift), 0.0)
            z_sum = tl.sum(ez, 0)
            z_lse = z_shift + tl.log(z_sum)
            q = ez / z_sum
            log_q = zs - z_lse
            # p = softmax(swap(t) / T) and log p
            ts_scaled = t * inv
            t_shift = t_max * inv  # the swap keeps the row's maximum
            et = tl.where(valid, tl.exp(ts_scaled - t_shift), 0.0)
            t_sum = tl.sum(et, 0)
            p = et / t_sum
            log_p = ts_scaled - (t_shift + tl.log(t_sum))
            # p = 0 (a teacher logit of -inf) adds 0, as in kl_div: 0 log 0 = 0
            kl += tl.where(valid & (p > 0), (temperature * temperature) * p * (log_p - log_q), 0.0)
            if NEEDS_GRAD:
                grad_ts += temperature * (q - p)
            if PSEUDO:
                # a_T = q_m - q_y, with q_m = 1 / z_sum (the top column's exponential is 1):
                # exactly zero when the student is right
                a = (1.0 - tl.exp((z_label - z_max) * inv)) / z_sum
                sum_t_gap += temperature * a
                if NEEDS_GRAD:
                    weighted_q += a * q
                    q_sum += q
        ts = tl.sum(kl, 0)
        ss = gap * sum_t_gap

        nan = float("nan")
        tl.store(terms_ptr + row, tl.where(label_ok, ts, nan))
        tl.store(terms_ptr + num_rows + row, tl.where(label_ok, ss, nan))
        tl.store(swapped_ptr + row, (t_top != label).to(dtype))
        tl.store(swapped_ptr + num_rows + row, (z_top != label).to(dtype))
        if NEEDS_GRAD:
            tl.store(grad_ts_ptr + row * num_classes + cols, grad_ts, mask=valid)
            if PSEUDO:
                if DETACH:
                    grad_ss = tl.where(is_top, sum_t_gap, 0.0) - tl.where(is_label, sum_t_gap, 0.0)
                else:
                    grad_ss = (
                        -gap * weighted_q
                        + tl.where(is_top, gap * q_sum + sum_t_gap, 0.0)
                        - tl.where(is_label, gap * q_sum + sum_t_gap, 0.0)
                    )
                tl.store(grad_ss_ptr + row * num_classes + cols, grad_ss, mask=valid)

    @triton.jit
    def _sld_backward_kernel(
        grad_ts_ptr, grad_ss_ptr, out_ts_ptr, out_ss_ptr, grad_ptr,
        num_classes, out_ts_stride, out_ss_stride,
        BLOCK: tl.constexpr, PSEUDO: tl.constexpr,
    ):  # fmt: skip
        """``grad[r] = dL/dts[r] * grad_ts[r] + dL/dss[r] * grad_ss[r]``, in ``grad``'s dtype."""
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        valid = cols < num_classes
        offset = row * num_classes + cols
        grad_ts = tl.load(grad_ts_ptr + offset, mask=valid, other=0.0)
        grad = tl.load(out_ts_ptr + row * out_ts_stride).to(grad_ts.dtype) * grad_ts
        if PSEUDO:
            grad_ss = tl.load(grad_ss_ptr + offset, mask=valid, other=0.0)
            grad += tl.load(out_ss_ptr + row * out_ss_stride).to(grad_ts.dtype) * grad_ss
        tl.store(grad_ptr + offset, grad.to(grad_ptr.dtype.element_ty), mask=valid)


def launch_shape(num_classes: int, fp64: bool = False) -> tuple[int, int]:
    """(block of columns, warps) for one row of ``num_classes``: four columns per thread in
    float32 (two in float64), up to 16 warps. On sm_80 and sm_90 the kernels then spill at
    most a few bytes of registers per thread (none up to 1000 classes in the flags SLD trains
    with, under Triton 3.6 and 3.8); float64 spills more (slower, still exact).
    tests/helpers/compile_fused.py checks this."""
    block = max(triton.next_power_of_2(num_classes), 16)
    warps = min(max(block // (64 if fp64 else 128), 1), 16)
    return block, warps


class FusedSwappedKL(torch.autograd.Function):
    """Fused per-row ``L_TS`` and ``L_SS``.

    ``apply(student (M, C), teacher (M, C), target (M,), temperatures (K,), teacher_swap,
    pseudo_teacher, detach)`` returns ``(terms (2, M), swapped (2, M))``: ``terms[0]`` is
    ``L_TS``, ``terms[1]`` is ``L_SS`` (zeros when ``pseudo_teacher`` is False), and
    ``swapped`` holds 1.0 where the teacher's (row 0) or the student's (row 1) top class is
    not the label. Rows with a label outside ``[0, C)`` get NaN terms. The gradient flows to
    ``student`` only, in its dtype.
    """

    @staticmethod
    def forward(ctx, student, teacher, target, temperatures, teacher_swap, pseudo_teacher, detach):
        num_rows, num_classes = student.shape
        fp64 = student.dtype == torch.float64
        compute_dtype = torch.float64 if fp64 else torch.float32
        z = student.detach()
        if z.stride(1) != 1:
            z = z.contiguous()
        t = teacher.detach()
        if t.stride(1) != 1:
            t = t.contiguous()
        target = target.contiguous()
        temperatures = temperatures.contiguous()
        needs_grad = ctx.needs_input_grad[0]
        terms = torch.empty((2, num_rows), dtype=compute_dtype, device=z.device)
        swapped = torch.empty((2, num_rows), dtype=compute_dtype, device=z.device)
        grad_ts = grad_ss = terms  # placeholders, never written when not needed
        if needs_grad:
            grad_ts = torch.empty((num_rows, num_classes), dtype=compute_dtype, device=z.device)
            if pseudo_teacher:
                grad_ss = torch.empty_like(grad_ts)
        block, warps = launch_shape(num_classes, fp64)
        _sld_forward_kernel[(num_rows,)](
            z, t, target, temperatures,
            terms, swapped, grad_ts, grad_ss,
            num_rows, num_classes, z.stride(0), t.stride(0),
            NUM_TEMPS=temperatures.shape[0], BLOCK=block, TEACHER_SWAP=bool(teacher_swap), PSEUDO=bool(pseudo_teacher),
            DETACH=bool(detach), NEEDS_GRAD=needs_grad, FP64=fp64, num_warps=warps,
        )  # fmt: skip
        ctx.pseudo_teacher = bool(pseudo_teacher)
        ctx.student_dtype = student.dtype
        ctx.launch = (block, warps)
        if needs_grad:
            ctx.save_for_backward(grad_ts, grad_ss if pseudo_teacher else None)
        ctx.mark_non_differentiable(swapped)
        return terms, swapped

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_terms, _grad_swapped):
        if not ctx.needs_input_grad[0]:  # reached through the teacher only: nothing to give
            return None, None, None, None, None, None, None
        grad_ts, grad_ss = ctx.saved_tensors
        num_rows, num_classes = grad_ts.shape
        grad = torch.empty((num_rows, num_classes), dtype=ctx.student_dtype, device=grad_ts.device)
        out_ts, out_ss = grad_terms[0], grad_terms[1]
        block, warps = ctx.launch
        _sld_backward_kernel[(num_rows,)](
            grad_ts, grad_ss if grad_ss is not None else grad_ts, out_ts, out_ss, grad,
            num_classes, out_ts.stride(0), out_ss.stride(0),
            BLOCK=block, PSEUDO=ctx.pseudo_teacher, num_warps=warps,
        )  # fmt: skip
        return grad, None, None, None, None, None, None
