"""slkd.losses.logits: logit standardization and the transform of student and teacher logits,
against literal float64 references written here (loops over rows and classes)."""

import pytest
import torch

from slkd.losses.logits import STANDARDIZE_EPS, standardize_logits, transform_logits
from tests.helpers.logit_references import swap_rows as _reference_swap
from tests.helpers.logit_references import z_score as _reference_standardize


FIXED = torch.tensor(
    [[2.0, -1.0, 0.5, 3.0, 0.0], [1.0, 1.0, 1.0, 4.0, -2.0], [-3.0, 7.5, 0.25, 0.25, 1.0]], dtype=torch.float64
)
LABELS = torch.tensor([0, 3, 2])


@pytest.mark.parametrize("eps", [STANDARDIZE_EPS, 0.0, 0.5])
def test_standardize_matches_the_float64_reference(eps):
    torch.testing.assert_close(standardize_logits(FIXED, eps), _reference_standardize(FIXED, eps), rtol=1e-12, atol=1e-12)


def test_standardize_default_eps_is_the_authors_1e_7():
    assert STANDARDIZE_EPS == 1e-7
    torch.testing.assert_close(standardize_logits(FIXED), _reference_standardize(FIXED, 1e-7), rtol=1e-12, atol=1e-12)


def test_standardized_rows_have_mean_zero_and_unit_sample_std():
    rows = torch.randn(6, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 5 + 3
    z = standardize_logits(rows, eps=0.0)
    torch.testing.assert_close(z.mean(dim=1), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.std(dim=1), torch.ones(6, dtype=torch.float64), atol=1e-12, rtol=0)


def test_standardize_ignores_a_positive_scale_and_a_shift_of_each_row():
    scale = torch.tensor([[0.5], [3.0], [10.0]], dtype=torch.float64)
    shift = torch.tensor([[-4.0], [0.0], [2.5]], dtype=torch.float64)
    torch.testing.assert_close(standardize_logits(FIXED * scale + shift, 0.0), standardize_logits(FIXED, 0.0), rtol=1e-12, atol=1e-12)


def test_a_constant_row_becomes_zeros_not_nan():
    out = standardize_logits(torch.full((2, 4), 3.0))
    assert torch.equal(out, torch.zeros(2, 4))


def test_standardize_keeps_the_dtype():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert standardize_logits(FIXED.to(dtype)).dtype == dtype


def test_standardize_gradient_is_the_closed_form():
    """dZ_i/du_j = (delta_ij - 1/C - Z_i Z_j / (C - 1)) / std for eps = 0."""
    rows = FIXED.clone().requires_grad_(True)
    weights = torch.tensor([[0.3, -1.0, 2.0, 0.1, 0.7]] * 3, dtype=torch.float64)
    (standardize_logits(rows, 0.0) * weights).sum().backward()
    classes = FIXED.shape[1]
    expected = []
    for row, weight in zip(_reference_standardize(FIXED, 0.0).tolist(), weights.tolist()):
        std = float(FIXED[len(expected)].std())
        expected.append([
            sum(weight[i] * ((i == j) - 1 / classes - row[i] * row[j] / (classes - 1)) for i in range(classes)) / std
            for j in range(classes)
        ])
    torch.testing.assert_close(rows.grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_standardize_passes_gradcheck():
    rows = FIXED.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u: standardize_logits(u), (rows,))


@pytest.mark.parametrize(
    "logits, eps, message",
    [
        (torch.zeros(3, 1), STANDARDIZE_EPS, "at least 2 classes"),
        (torch.zeros(5), STANDARDIZE_EPS, "must be 2-d"),
        (torch.zeros(2, 3, dtype=torch.long), STANDARDIZE_EPS, "must be a floating tensor"),
        (torch.zeros(2, 3), -1.0, "eps must be a number >= 0"),
    ],
    ids=["one-class", "1-d", "integer", "negative-eps"],
)
def test_standardize_rejects_bad_input(logits, eps, message):
    with pytest.raises(ValueError, match=message):
        standardize_logits(logits, eps)


# --------------------------------------------------------------------------- transform_logits
def test_transform_with_nothing_on_returns_the_inputs():
    student, teacher = FIXED.clone(), FIXED.flip(1)
    out_student, out_teacher = transform_logits(student, teacher, LABELS)
    assert out_student is student and out_teacher is teacher


def test_transform_swaps_the_teacher_only():
    student, teacher = FIXED.clone(), FIXED.flip(1).contiguous()
    out_student, out_teacher = transform_logits(student, teacher, LABELS, swap=True)
    assert out_student is student
    torch.testing.assert_close(out_teacher, _reference_swap(teacher, LABELS), rtol=0, atol=0)


def test_transform_standardizes_both_and_swap_commutes_with_it():
    student, teacher = FIXED.clone(), (FIXED.flip(1) * 3).contiguous()
    out_student, out_teacher = transform_logits(student, teacher, LABELS, swap=True, standardize=True)
    torch.testing.assert_close(out_student, _reference_standardize(student, 1e-7), rtol=1e-12, atol=1e-12)
    expected = _reference_standardize(_reference_swap(teacher, LABELS), 1e-7)
    torch.testing.assert_close(out_teacher, expected, rtol=1e-12, atol=1e-12)
    # Z(swap(t)) = swap(Z(t))
    torch.testing.assert_close(out_teacher, _reference_swap(_reference_standardize(teacher, 1e-7), LABELS), rtol=1e-12, atol=1e-12)


def test_transform_gradient_flows_to_the_student_through_the_standardization():
    student = FIXED.clone().requires_grad_(True)
    out_student, _ = transform_logits(student, FIXED.flip(1), LABELS, swap=True, standardize=True)
    out_student[:, 0].sum().backward()
    reference = FIXED.clone().requires_grad_(True)
    standardize_logits(reference)[:, 0].sum().backward()
    torch.testing.assert_close(student.grad, reference.grad, rtol=0, atol=0)


def test_transform_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="the same rows and the same classes"):
        transform_logits(torch.zeros(3, 5), torch.zeros(3, 4), LABELS)
