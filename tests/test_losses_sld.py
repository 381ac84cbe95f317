"""Tests for slkd.losses.sld (CPU, no mdistiller).

The oracle below is written literally from docs/method.md, sections 1-2, and shares no code with
``slkd``: float64, one row and one temperature at a time, the argmax found by a python loop
(first index on ties), the swap done by exchanging two entries of a copy of the row, the
log-softmax written as ``u/T - (c + log sum exp(u/T - c))`` and the KL as the explicit sum
``sum_j p_j (log p_j - log q_j)``. Its gradients come from autograd through those literal
operations, so they check the closed-form backward of ``_SwappedKL``.
"""

import math

import pytest
import torch

from slkd.losses.sld import SLDLoss, sld_loss, sld_terms, swap_logits

GAMMA = 150
EPOCH_OFF = GAMMA  # epoch == gamma: L_SS still off
EPOCH_ON = GAMMA + 1
TEMPERATURE_SETS = [(1.0, 2.0, 3.0, 4.0, 5.0, 6.0), (4.0,), (0.5, 2.0, 7.0)]
SMALL_SHAPES = [(1, 2), (2, 2), (7, 5)]
LARGE_SHAPES = [(64, 100), (32, 1000)]


# --------------------------------------------------------------------------- #
# independent reference
# --------------------------------------------------------------------------- #
def ref_first_argmax(values):
    """Index of the largest value, first one on ties (plain python)."""
    best = 0
    for j in range(1, len(values)):
        if values[j] > values[best]:
            best = j
    return best


def ref_swap_row(row, label):
    """Copy of a 1-d tensor with entries ``label`` and ``argmax`` exchanged (autograd-able)."""
    top = ref_first_argmax(row.detach().tolist())
    out = row.clone()
    if top != label:
        out[label] = row[top]
        out[top] = row[label]
    return out


def ref_log_softmax(values, temperature):
    scaled = values / temperature
    shift = scaled.detach().max()  # any constant: the expression is exact for every shift
    return scaled - (shift + torch.log(torch.exp(scaled - shift).sum()))


def ref_kl(log_p, log_q):
    """KL(p || q) = sum_j p_j (log p_j - log q_j); log p is finite, so p_j = 0 adds 0."""
    return (torch.exp(log_p) * (log_p - log_q)).sum()


def ref_rows(z, t, y, temperatures, *, teacher_swap=True, pseudo=True, detach=False):
    """Per-row L_TS and L_SS, lists of 0-d float64 tensors (gradient flows to ``z``)."""
    ts_rows, ss_rows = [], []
    for i in range(z.shape[0]):
        label = int(y[i])
        student = z[i]
        teacher = t[i].detach()
        if teacher_swap:
            teacher = ref_swap_row(teacher, label)
        pseudo_target = ref_swap_row(student.detach() if detach else student, label)
        ts = torch.zeros((), dtype=torch.float64)
        ss = torch.zeros((), dtype=torch.float64)
        for temperature in temperatures:
            log_q = ref_log_softmax(student, temperature)
            ts = ts + temperature**2 * ref_kl(ref_log_softmax(teacher, temperature), log_q)
            if pseudo:
                ss = ss + temperature**2 * ref_kl(
                    ref_log_softmax(pseudo_target, temperature), log_q
                )
        ts_rows.append(ts)
        ss_rows.append(ss)
    return ts_rows, ss_rows


def ref_loss(z, t, y, epoch, *, temperatures, gamma=GAMMA, teacher_swap=True,
             student_swap=True, detach=False):
    pseudo = student_swap and epoch > gamma
    ts_rows, ss_rows = ref_rows(
        z, t, y, temperatures, teacher_swap=teacher_swap, pseudo=pseudo, detach=detach
    )
    total = torch.zeros((), dtype=torch.float64)
    for ts, ss in zip(ts_rows, ss_rows):
        total = total + ts + ss
    return total / z.shape[0]


def ref_value_and_grad(z, t, y, epoch, **kwargs):
    """Reference loss and its gradient w.r.t. ``z``, both float64."""
    z64 = z.detach().to(torch.float64).requires_grad_(True)
    loss = ref_loss(z64, t.detach().to(torch.float64), y, epoch, **kwargs)
    (grad,) = torch.autograd.grad(loss, z64)
    return loss.detach(), grad


def make_batch(n, c, seed, dtype=torch.float64, scale=3.0):
    """Random student/teacher logits and labels; row 0 is made right for the student and
    the last row wrong for both (when there is more than one row)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale
    t = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale
    y = torch.randint(0, c, (n,), generator=gen)
    z[0, y[0]] = z[0].max() + 1.0
    if n > 1:
        other = (int(y[-1]) + 1) % c
        z[-1, other] = z[-1].max() + 1.0
        t[-1, other] = t[-1].max() + 1.0
    return z.to(dtype), t.to(dtype), y


def run_loss(z, t, y, epoch, **kwargs):
    """sld_loss value and gradient w.r.t. the student logits."""
    z = z.detach().clone().requires_grad_(True)
    loss = sld_loss(z, t, y, epoch, gamma=GAMMA, **kwargs)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


# --------------------------------------------------------------------------- #
# the reference itself (so that a wrong oracle cannot pass silently)
# --------------------------------------------------------------------------- #
def test_reference_sanity():
    # a hand-computed one: T = 1, two classes, teacher right, student uniform
    z = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    value = ref_loss(z, t, y, EPOCH_ON, temperatures=(1.0,))
    assert abs(value.item() - expected) < 1e-14
    # teacher wrong: the swap makes it right, same value
    t_wrong = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    value = ref_loss(z, t_wrong, y, EPOCH_OFF, temperatures=(1.0,))
    assert abs(value.item() - expected) < 1e-14
    assert ref_first_argmax([1.0, 3.0, 3.0]) == 1


# --------------------------------------------------------------------------- #
# swap_logits
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_swap_matches_reference_and_keeps_dtype(dtype):
    z, _, y = make_batch(32, 10, seed=1, dtype=dtype)
    out = swap_logits(z, y)
    assert out.dtype == dtype and out.shape == z.shape
    for i in range(z.shape[0]):
        expected = ref_swap_row(z[i].to(torch.float64), int(y[i]))
        assert torch.equal(out[i].to(torch.float64), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_swap_invariants(dtype):
    z, _, y = make_batch(64, 20, seed=2, dtype=dtype)
    out = swap_logits(z, y)
    wrong_rows = 0
    for i in range(z.shape[0]):
        row, swapped, label = z[i], out[i], int(y[i])
        # the label holds the row max
        assert swapped[label] == row.max()
        assert swapped[label] == swapped.max()
        # same multiset of values
        assert torch.equal(torch.sort(swapped).values, torch.sort(row).values)
        changed = int((swapped != row).sum())
        if ref_first_argmax(row.tolist()) == label:
            assert changed == 0
        else:
            wrong_rows += 1
            top = ref_first_argmax(row.tolist())
            assert changed == 2  # random values: no ties in these rows
            assert swapped[top] == row[label]
    assert wrong_rows > 10


def test_swap_rows_already_right_unchanged():
    z = torch.tensor([[5.0, 1.0, 2.0], [0.0, 9.0, -1.0]])
    y = torch.tensor([0, 1])
    assert torch.equal(swap_logits(z, y), z)


def test_swap_ties_use_first_index_of_max():
    z = torch.tensor([
        [1.0, 3.0, 3.0, 0.0],   # max tied at 1 and 2, label 0: exchange 0 and 1
        [1.0, 3.0, 3.0, 0.0],   # label 3
        [3.0, 1.0, 3.0, 2.0],   # label tied with the max (first max 0): values unchanged
        [1.0, 3.0, 3.0, 0.0],   # label 2 tied with the first max 1: unchanged
        [2.0, 2.0, 2.0, 2.0],   # all tied
    ])
    y = torch.tensor([0, 3, 2, 2, 3])
    expected = torch.tensor([
        [3.0, 1.0, 3.0, 0.0],
        [1.0, 0.0, 3.0, 3.0],
        [3.0, 1.0, 3.0, 2.0],
        [1.0, 3.0, 3.0, 0.0],
        [2.0, 2.0, 2.0, 2.0],
    ])
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert torch.equal(swap_logits(z.to(dtype), y), expected.to(dtype))


def test_swap_gradient_is_the_same_permutation():
    z, _, y = make_batch(16, 7, seed=3)
    z.requires_grad_(True)
    w = torch.randn(16, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (grad,) = torch.autograd.grad((w * swap_logits(z, y)).sum(), z)
    expected = torch.stack([
        ref_swap_row_by_index(w[i], ref_first_argmax(z[i].tolist()), int(y[i]))
        for i in range(16)
    ])
    assert torch.equal(grad, expected)
    # tie between label and max: the values stay, but the exchange still happens
    z = torch.tensor([[1.0, 3.0, 3.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[10.0, 20.0, 30.0]], dtype=torch.float64)
    (grad,) = torch.autograd.grad((w * swap_logits(z, torch.tensor([2]))).sum(), z)
    assert torch.equal(grad, torch.tensor([[10.0, 30.0, 20.0]], dtype=torch.float64))


def ref_swap_row_by_index(row, a, b):
    out = row.clone()
    out[a], out[b] = row[b], row[a]
    return out


def test_swap_not_in_place():
    z, _, y = make_batch(8, 6, seed=5, dtype=torch.float32)
    before = z.clone()
    out = swap_logits(z, y)
    assert torch.equal(z, before)
    assert out.data_ptr() != z.data_ptr()
    out.add_(1.0)
    assert torch.equal(z, before)


def test_swap_non_contiguous_inputs_and_int32_labels():
    z, _, y = make_batch(12, 9, seed=6)
    zt = z.t().contiguous().t()  # same values, column-major strides
    assert not zt.is_contiguous()
    y_strided = torch.stack([y, y], dim=1)[:, 0]
    assert not y_strided.is_contiguous()
    expected = swap_logits(z, y)
    assert torch.equal(swap_logits(zt, y_strided), expected)
    assert torch.equal(swap_logits(z, y.to(torch.int32)), expected)


# --------------------------------------------------------------------------- #
# sld_loss against the reference
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", SMALL_SHAPES + LARGE_SHAPES)
@pytest.mark.parametrize("temperatures", TEMPERATURE_SETS)
@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
@pytest.mark.parametrize("detach", [False, True])
def test_sld_loss_matches_reference_float64(shape, temperatures, epoch, detach):
    z, t, y = make_batch(*shape, seed=sum(shape) + len(temperatures))
    value, grad = run_loss(
        z, t, y, epoch, temperatures=temperatures, detach_pseudo_teacher=detach
    )
    ref_value, ref_grad = ref_value_and_grad(
        z, t, y, epoch, temperatures=temperatures, detach=detach
    )
    assert value.dtype == torch.float64 and grad.dtype == torch.float64
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 2), (7, 5), (64, 100), (32, 1000)])
@pytest.mark.parametrize("temperatures", TEMPERATURE_SETS)
@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
def test_sld_loss_matches_reference_float32(shape, temperatures, epoch):
    z, t, y = make_batch(*shape, seed=7, dtype=torch.float32)
    value, grad = run_loss(z, t, y, epoch, temperatures=temperatures)
    ref_value, ref_grad = ref_value_and_grad(z, t, y, epoch, temperatures=temperatures)
    assert value.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


def tied_batch():
    """Student and teacher rows with tied maxima, labels and temperatures (float64): the
    teacher's top class is never the label, the student's in one row of four."""
    z = torch.tensor([
        [1.0, 3.0, 3.0, 0.0, -1.0],   # student: first max 1, label 0
        [1.0, 3.0, 3.0, 0.0, -1.0],   # label tied with the max (second of the two)
        [2.0, 2.0, 0.5, 2.0, 1.0],    # three-way tie, label 4
        [0.0, 1.0, 2.0, 3.0, 4.0],    # no tie, right
    ], dtype=torch.float64)
    t = torch.tensor([
        [0.0, 4.0, 1.0, 4.0, 2.0],    # teacher: first max 1, the swap moves column 1
        [5.0, 1.0, 5.0, 0.0, 0.0],    # label 2 tied with the first max 0
        [1.0, 0.0, 3.0, 3.0, 3.0],    # three-way tie starting at 2, label 4
        [0.0, 0.0, 0.0, 0.0, 0.0],    # all tied, label 4
    ], dtype=torch.float64)
    y = torch.tensor([0, 2, 4, 4])
    return z, t, y, (0.5, 2.0, 7.0)


@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
@pytest.mark.parametrize("detach", [False, True])
def test_sld_loss_with_ties_matches_reference(epoch, detach):
    """Tied maxima in teacher and student rows: the first index of the max is swapped."""
    z, t, y, temperatures = tied_batch()
    value, grad = run_loss(
        z, t, y, epoch, temperatures=temperatures, detach_pseudo_teacher=detach
    )
    ref_value, ref_grad = ref_value_and_grad(
        z, t, y, epoch, temperatures=temperatures, detach=detach
    )
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    terms = SLDLoss(temperatures=temperatures).terms(z, t, y, epoch)
    assert terms.teacher_swap_rate.item() == 1.0  # ties: argmax is the first index
    assert terms.student_swap_rate.item() == 0.75
    if epoch > GAMMA:
        assert terms.student_swap_loss[1].item() == 0.0  # label tied with the max: L_SS = 0


@pytest.mark.parametrize("temperatures", TEMPERATURE_SETS)
def test_epoch_gate_is_a_step_at_gamma(temperatures):
    z, t, y = make_batch(7, 5, seed=8)
    for gamma in (0, 5, GAMMA):
        values = {
            epoch: sld_loss(z, t, y, epoch, temperatures=temperatures, gamma=gamma)
            for epoch in (1, gamma, gamma + 1, gamma + 50)
        }
        off = ref_loss(z, t, y, gamma, temperatures=temperatures, gamma=gamma)
        on = ref_loss(z, t, y, gamma + 1, temperatures=temperatures, gamma=gamma)
        assert on.item() > off.item()  # the batch has rows the student gets wrong
        torch.testing.assert_close(values[gamma], off, rtol=1e-10, atol=0)
        torch.testing.assert_close(values[gamma + 1], on, rtol=1e-10, atol=0)
        torch.testing.assert_close(values[gamma + 50], on, rtol=1e-10, atol=0)
        if gamma > 0:
            torch.testing.assert_close(values[1], off, rtol=1e-10, atol=0)


def test_detached_pseudo_teacher_same_value_other_gradient():
    z, t, y = make_batch(7, 5, seed=9)
    attached, grad_attached = run_loss(z, t, y, EPOCH_ON, detach_pseudo_teacher=False)
    detached, grad_detached = run_loss(z, t, y, EPOCH_ON, detach_pseudo_teacher=True)
    torch.testing.assert_close(detached, attached, rtol=1e-14, atol=0)
    assert (grad_attached - grad_detached).abs().max() > 1e-3
    # rows the student gets right carry no L_SS and thus the same gradient
    torch.testing.assert_close(grad_detached[0], grad_attached[0], rtol=1e-12, atol=1e-14)
    # off: detaching changes nothing
    _, g_off_a = run_loss(z, t, y, EPOCH_OFF, detach_pseudo_teacher=False)
    _, g_off_d = run_loss(z, t, y, EPOCH_OFF, detach_pseudo_teacher=True)
    assert torch.equal(g_off_a, g_off_d)


@pytest.mark.parametrize("shape", [(1, 2), (7, 5), (64, 100)])
@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
def test_teacher_swap_false_is_plain_multi_temperature_kd(shape, epoch):
    temperatures = (1.0, 3.0, 6.0)
    z, t, y = make_batch(*shape, seed=10)
    value, grad = run_loss(z, t, y, epoch, temperatures=temperatures, teacher_swap=False)
    ref_value, ref_grad = ref_value_and_grad(
        z, t, y, epoch, temperatures=temperatures, teacher_swap=False
    )
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    # and it differs from the swapped version on a batch where the teacher is wrong
    swapped, _ = run_loss(z, t, y, epoch, temperatures=temperatures)
    if shape[0] > 1:
        assert abs(swapped.item() - value.item()) > 1e-6


def test_teacher_swap_is_a_no_op_when_the_teacher_is_right():
    z, t, _ = make_batch(7, 5, seed=11)
    y = t.argmax(dim=1)
    for epoch in (EPOCH_OFF, EPOCH_ON):
        a = sld_loss(z, t, y, epoch, teacher_swap=True)
        b = sld_loss(z, t, y, epoch, teacher_swap=False)
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(1, 2), (7, 5), (32, 1000)])
def test_student_swap_false_never_adds_l_ss(shape):
    z, t, y = make_batch(*shape, seed=12)
    off = sld_loss(z, t, y, 1, gamma=GAMMA)
    for epoch in (EPOCH_OFF, EPOCH_ON, 10_000):
        for detach in (False, True):
            value, grad = run_loss(
                z, t, y, epoch, student_swap=False, detach_pseudo_teacher=detach
            )
            assert torch.equal(value, off)
            ref_value, ref_grad = ref_value_and_grad(
                z, t, y, epoch, temperatures=(1, 2, 3, 4, 5, 6), student_swap=False
            )
            torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    terms = SLDLoss(student_swap=False).terms(z, t, y, 10_000)
    assert torch.equal(terms.student_swap_loss, torch.zeros_like(terms.student_swap_loss))


# --------------------------------------------------------------------------- #
# closed form of L_SS
# --------------------------------------------------------------------------- #
def closed_form_l_ss(row, label, temperatures):
    """sum_T T^2 (p_m - p_y)(log p_m - log p_y), p = softmax(row / T), with math only."""
    top = ref_first_argmax(row)
    total = 0.0
    for temperature in temperatures:
        scaled = [v / temperature for v in row]
        shift = max(scaled)
        log_norm = shift + math.log(sum(math.exp(v - shift) for v in scaled))
        log_pm, log_py = scaled[top] - log_norm, scaled[label] - log_norm
        total += temperature**2 * (math.exp(log_pm) - math.exp(log_py)) * (log_pm - log_py)
    return total


@pytest.mark.parametrize("temperatures", TEMPERATURE_SETS)
@pytest.mark.parametrize("classes", [2, 5, 100])
def test_l_ss_closed_form(temperatures, classes):
    gen = torch.Generator().manual_seed(13 + classes)
    for trial in range(4):
        z = torch.randn(1, classes, generator=gen, dtype=torch.float64) * 3
        t = torch.randn(1, classes, generator=gen, dtype=torch.float64) * 3
        top = ref_first_argmax(z[0].tolist())
        others = [j for j in range(classes) if j != top]
        wrong = torch.tensor([others[trial % len(others)]])
        right = torch.tensor([top])
        for detach in (False, True):
            kwargs = dict(temperatures=temperatures, gamma=GAMMA, detach_pseudo_teacher=detach)
            l_ss = sld_loss(z, t, wrong, EPOCH_ON, **kwargs) - sld_loss(
                z, t, wrong, EPOCH_OFF, **kwargs
            )
            expected = closed_form_l_ss(z[0].tolist(), int(wrong), temperatures)
            assert expected > 0
            assert abs(l_ss.item() - expected) <= 1e-10 * max(1.0, expected)
            l_ss_right = sld_loss(z, t, right, EPOCH_ON, **kwargs) - sld_loss(
                z, t, right, EPOCH_OFF, **kwargs
            )
            assert l_ss_right.item() == 0.0


# --------------------------------------------------------------------------- #
# gradcheck, teacher gets no gradient
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
@pytest.mark.parametrize("teacher_swap", [True, False])
@pytest.mark.parametrize("temperatures", [(1.0, 2.0, 3.0), (0.5, 7.0)])
def test_gradcheck_float64(epoch, teacher_swap, temperatures):
    z, t, y = make_batch(4, 6, seed=14)
    z.requires_grad_(True)
    # the undefined-grad check is slow: run it on one combination only
    check = dict(eps=1e-6, atol=1e-8, rtol=1e-6,
                 check_undefined_grad=(temperatures == (1.0, 2.0, 3.0) and teacher_swap))

    def fn(student):
        return sld_loss(
            student, t, y, epoch, temperatures=temperatures, gamma=GAMMA,
            teacher_swap=teacher_swap,
        )

    assert torch.autograd.gradcheck(fn, (z,), **check)

    def per_row(student):
        terms = sld_terms(
            student, t, y, torch.tensor(temperatures, dtype=torch.float64),
            teacher_swap=teacher_swap, student_swap=epoch > GAMMA,
        )
        return terms.teacher_swap_loss, terms.student_swap_loss

    assert torch.autograd.gradcheck(per_row, (z,), **check)


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_gradient_to_teacher(detach, dtype):
    z, t, y = make_batch(7, 5, seed=15, dtype=dtype)
    z.requires_grad_(True)
    t.requires_grad_(True)
    loss = sld_loss(z, t, y, EPOCH_ON, detach_pseudo_teacher=detach)
    grad_t = torch.autograd.grad(loss, (z, t), allow_unused=True, retain_graph=True)[1]
    assert grad_t is None
    loss.backward()
    assert t.grad is None
    assert z.grad is not None and torch.isfinite(z.grad).all()
    # also for a teacher computed by a differentiable op
    source = torch.randn(7, 5, dtype=dtype, requires_grad=True)
    loss = SLDLoss()(z, source * 2.0, y, EPOCH_ON)
    assert torch.autograd.grad(loss, source, allow_unused=True)[0] is None


# --------------------------------------------------------------------------- #
# dtypes and autocast
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(dtype):
    z, t, y = make_batch(16, 10, seed=16, dtype=dtype)
    value, grad = run_loss(z, t, y, EPOCH_ON)
    assert value.dtype == torch.float32 and grad.dtype == dtype
    expected, expected_grad = run_loss(z.float(), t.float(), y, EPOCH_ON)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad.to(dtype))
    ref_value, _ = ref_value_and_grad(z, t, y, EPOCH_ON, temperatures=(1, 2, 3, 4, 5, 6))
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
@pytest.mark.parametrize("detach", [False, True])
def test_autocast_bfloat16(epoch, detach):
    z, t, y = make_batch(16, 10, seed=17, dtype=torch.bfloat16)
    z.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sld_loss(z, t, y, epoch, detach_pseudo_teacher=detach)
        terms = SLDLoss(detach_pseudo_teacher=detach).terms(z, t, y, epoch)
    assert loss.dtype == torch.float32
    assert terms.teacher_swap_loss.dtype == torch.float32
    assert terms.student_swap_loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, z)
    assert grad.dtype == torch.bfloat16

    z32 = z.detach().float().requires_grad_(True)
    expected = sld_loss(z32, t.float(), y, epoch, detach_pseudo_teacher=detach)
    (expected_grad,) = torch.autograd.grad(expected, z32)
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad.to(torch.bfloat16))
    # and it agrees with float64 arithmetic on those bf16 values to float32 precision
    ref_value, _ = ref_value_and_grad(
        z, t, y, epoch, temperatures=(1, 2, 3, 4, 5, 6), detach=detach
    )
    torch.testing.assert_close(loss.detach().double(), ref_value, rtol=1e-5, atol=1e-6)


def test_autocast_float32_inputs_unchanged():
    z, t, y = make_batch(16, 10, seed=18, dtype=torch.float32)
    plain = sld_loss(z, t, y, EPOCH_ON)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = sld_loss(z, t, y, EPOCH_ON)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- #
# edge cases
# --------------------------------------------------------------------------- #
def test_batch_of_one_two_classes():
    z = torch.tensor([[0.3, 1.2]], dtype=torch.float64)
    t = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    for label in (0, 1):
        y = torch.tensor([label])
        for epoch in (EPOCH_OFF, EPOCH_ON):
            for detach in (False, True):
                value, grad = run_loss(z, t, y, epoch, detach_pseudo_teacher=detach)
                ref_value, ref_grad = ref_value_and_grad(
                    z, t, y, epoch, temperatures=(1, 2, 3, 4, 5, 6), detach=detach
                )
                torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
                torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_all_rows_already_right():
    z, t, _ = make_batch(8, 6, seed=19)
    y = z.argmax(dim=1)
    t = t.clone()
    t[torch.arange(8), y] = t.max(dim=1).values + 1.0  # teacher right too
    off = sld_loss(z, t, y, EPOCH_OFF)
    on = sld_loss(z, t, y, EPOCH_ON)
    assert torch.equal(off, on)
    assert torch.equal(sld_loss(z, t, y, EPOCH_ON, teacher_swap=False), off)
    ref_value, ref_grad = ref_value_and_grad(z, t, y, EPOCH_ON, temperatures=(1, 2, 3, 4, 5, 6))
    value, grad = run_loss(z, t, y, EPOCH_ON)
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    terms = SLDLoss().terms(z, t, y, EPOCH_ON)
    assert torch.equal(terms.student_swap_loss, torch.zeros(8, dtype=torch.float64))
    assert terms.teacher_swap_rate.item() == 0.0 and terms.student_swap_rate.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("detach", [False, True])
def test_large_logits_finite(dtype, detach):
    z, t, y = make_batch(8, 10, seed=20, scale=1e4)
    z, t = z.to(dtype), t.to(dtype)
    value, grad = run_loss(z, t, y, EPOCH_ON, detach_pseudo_teacher=detach)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    if dtype == torch.float64:
        ref_value, ref_grad = ref_value_and_grad(
            z, t, y, EPOCH_ON, temperatures=(1, 2, 3, 4, 5, 6), detach=detach
        )
        torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-8)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_identical_teacher_and_student_all_right_is_zero(dtype):
    z, _, _ = make_batch(8, 6, seed=21, dtype=dtype)
    y = z.argmax(dim=1)
    z = z.clone().requires_grad_(True)
    loss = sld_loss(z, z.detach().clone(), y, EPOCH_ON)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, z)
    assert grad.abs().max().item() <= 1e-6


# --------------------------------------------------------------------------- #
# SLDLoss module
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("temperatures", TEMPERATURE_SETS)
@pytest.mark.parametrize(
    "flags",
    [
        dict(),
        dict(teacher_swap=False),
        dict(student_swap=False),
        dict(detach_pseudo_teacher=True),
    ],
)
def test_module_matches_function(temperatures, flags):
    z, t, y = make_batch(7, 5, seed=22)
    module = SLDLoss(temperatures=temperatures, gamma=10, **flags)
    for epoch in (1, 10, 11, 200):
        zm = z.clone().requires_grad_(True)
        zf = z.clone().requires_grad_(True)
        a = module(zm, t, y, epoch)
        b = sld_loss(zf, t, y, epoch, temperatures=temperatures, gamma=10, **flags)
        assert torch.equal(a, b)
        assert torch.equal(torch.autograd.grad(a, zm)[0], torch.autograd.grad(b, zf)[0])
        assert module.student_swap_on(epoch) == (
            flags.get("student_swap", True) and epoch > 10
        )


def test_module_temperatures_buffer():
    module = SLDLoss(temperatures=(0.5, 2.0, 7.0))
    assert "temperatures" not in module.state_dict()
    assert "temperatures" in dict(module.named_buffers())
    assert module.temperatures.tolist() == [0.5, 2.0, 7.0]
    module.load_state_dict({})  # nothing persistent to load
    assert module.to(torch.float32).temperatures.dtype == torch.float32
    assert module.to(torch.float64).temperatures.dtype == torch.float64
    assert module.to("meta").temperatures.device.type == "meta"
    module = SLDLoss().to(torch.float32)
    z, t, y = make_batch(7, 5, seed=23)
    torch.testing.assert_close(module(z, t, y, EPOCH_ON), sld_loss(z, t, y, EPOCH_ON),
                               rtol=1e-12, atol=0)


def test_module_extra_repr():
    module = SLDLoss(temperatures=(0.5, 2, 7), gamma=30, teacher_swap=False,
                     student_swap=True, detach_pseudo_teacher=True)
    text = repr(module)
    assert "temperatures=(0.5, 2, 7)" in text
    assert "gamma=30" in text
    assert "teacher_swap=False" in text
    assert "student_swap=True" in text
    assert "detach_pseudo_teacher=True" in text
    assert "temperatures=(1, 2, 3, 4, 5, 6)" in repr(SLDLoss())
    assert "gamma=150" in repr(SLDLoss())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
def test_module_terms(dtype, epoch):
    z, t, y = make_batch(64, 10, seed=24, dtype=dtype)
    module = SLDLoss(temperatures=(1.0, 4.0), gamma=GAMMA)
    terms = module.terms(z, t, y, epoch)
    n = z.shape[0]
    assert terms.teacher_swap_loss.shape == (n,) and terms.student_swap_loss.shape == (n,)
    assert terms.teacher_swap_rate.dim() == 0 and terms.student_swap_rate.dim() == 0
    torch.testing.assert_close((terms.teacher_swap_loss + terms.student_swap_loss).mean(),
                               module(z, t, y, epoch), rtol=1e-12, atol=0)
    ts_ref, ss_ref = ref_rows(z.double(), t.double(), y, (1.0, 4.0), pseudo=epoch > GAMMA)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.teacher_swap_loss.double(), torch.stack(ts_ref), **tol)
    torch.testing.assert_close(terms.student_swap_loss.double(), torch.stack(ss_ref), **tol)
    teacher_wrong = sum(ref_first_argmax(t[i].tolist()) != int(y[i]) for i in range(n))
    student_wrong = sum(ref_first_argmax(z[i].tolist()) != int(y[i]) for i in range(n))
    assert 0 < teacher_wrong < n and 0 < student_wrong < n
    assert terms.teacher_swap_rate.item() == pytest.approx(teacher_wrong / n, abs=1e-7)
    assert terms.student_swap_rate.item() == pytest.approx(student_wrong / n, abs=1e-7)
    # the swap rates do not depend on whether L_SS is on
    other = module.terms(z, t, y, 1)
    assert torch.equal(other.student_swap_rate, terms.student_swap_rate)


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
def _ok():
    z, t, y = make_batch(4, 5, seed=25)
    return z, t, y


def test_error_logits_not_two_dimensional():
    z, t, y = _ok()
    with pytest.raises(ValueError, match="logits must be 2-d"):
        sld_loss(z[0], t[0], y[:1], EPOCH_ON)
    with pytest.raises(ValueError, match="logits must be 2-d"):
        sld_loss(z.unsqueeze(0), t.unsqueeze(0), y, EPOCH_ON)
    with pytest.raises(ValueError, match="logits must be 2-d"):
        swap_logits(z[0], y[:1])
    with pytest.raises(ValueError, match="logits must be 2-d"):
        swap_logits(z.unsqueeze(-1), y)


def test_error_teacher_student_shape_mismatch():
    z, t, y = _ok()
    with pytest.raises(ValueError, match=r"teacher_logits has shape \(4, 4\) but student_logits has \(4, 5\)"):
        sld_loss(z, t[:, :4], y, EPOCH_ON)
    with pytest.raises(ValueError, match="same rows and the same classes"):
        SLDLoss()(z, t[:3], y, EPOCH_ON)


def test_error_target_wrong_length_or_type():
    z, t, y = _ok()
    with pytest.raises(ValueError, match="target must be 1-d"):
        sld_loss(z, t, y[:3], EPOCH_ON)
    with pytest.raises(ValueError, match="target must be 1-d"):
        sld_loss(z, t, y.view(-1, 1), EPOCH_ON)
    with pytest.raises(ValueError, match="target must be 1-d"):
        swap_logits(z, y[:3])
    with pytest.raises(TypeError, match="integer class labels"):
        sld_loss(z, t, y.double(), EPOCH_ON)
    with pytest.raises(TypeError, match="integer class labels"):
        swap_logits(z, y.bool())
    with pytest.raises(TypeError, match="floating tensor"):
        swap_logits(torch.ones(4, 5, dtype=torch.long), y)


def test_error_labels_out_of_range():
    z, t, y = _ok()
    bad = y.clone()
    bad[1] = 5
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        sld_loss(z, t, bad, EPOCH_ON)
    bad[1] = -1
    with pytest.raises(ValueError, match="labels must lie in"):
        swap_logits(z, bad)


@pytest.mark.parametrize(
    "temperatures, match",
    [
        ((), "temperatures is empty"),
        ([], "temperatures is empty"),
        ((1.0, 0.0), r"temperatures\[1\] is 0.0: temperatures must be positive numbers in \[0.0001, 10000\]"),
        ((-2.0,), "temperatures is -2.0: temperatures must be positive"),
        ((4.0, float("inf")), r"temperatures\[1\] is inf: temperatures must be"),
        ((float("nan"),), "temperatures must be"),
        ((float("-inf"),), "temperatures must be"),
    ],
)
def test_error_bad_temperatures(temperatures, match):
    z, t, y = _ok()
    with pytest.raises(ValueError, match=match):
        sld_loss(z, t, y, EPOCH_ON, temperatures=temperatures)
    with pytest.raises(ValueError, match=match):
        SLDLoss(temperatures=temperatures)


def test_error_bad_temperature_tensor_in_sld_terms():
    z, t, y = _ok()
    with pytest.raises(ValueError, match="non-empty 1-d tensor"):
        sld_terms(z, t, y, torch.zeros(0, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-empty 1-d tensor"):
        sld_terms(z, t, y, torch.ones(2, 2, dtype=torch.float64))
