"""Literal float64 references for the logit transforms and the KD and DKD losses (loops and
plain formulas, written from the papers, not from slkd's or the hosts' code)."""

import math

import torch


def z_score(rows, eps=1e-7):
    """Row by row: (u - mean) / (eps + sample std with C - 1)."""
    out = []
    for row in torch.as_tensor(rows).tolist():
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
        out.append([(v - mean) / (eps + std) for v in row])
    return torch.tensor(out, dtype=torch.float64)


def swap_rows(rows, labels):
    """Exchange each row's label entry with its first largest entry."""
    out = []
    for row, label in zip(torch.as_tensor(rows).tolist(), labels.tolist()):
        top = max(range(len(row)), key=lambda c: (row[c], -c))
        row = list(row)
        row[label], row[top] = row[top], row[label]
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def z_score_torch(rows, eps=1e-7):
    """:func:`z_score` with autograd: for gradient references."""
    centred = rows - rows.sum(dim=1, keepdim=True) / rows.shape[1]
    std = torch.sqrt((centred * centred).sum(dim=1, keepdim=True) / (rows.shape[1] - 1))
    return centred / (eps + std)


def kd(student, teacher, temperature):
    """T^2 * mean over rows of KL(softmax(t / T) || softmax(s / T))."""
    p = torch.softmax(teacher / temperature, dim=1)
    log_q = torch.log_softmax(student / temperature, dim=1)
    return temperature**2 * (p * (torch.log(p) - log_q)).sum(dim=1).mean()


def dkd(student, teacher, target, alpha, beta, temperature):
    """Decoupled KD (Zhao et al., CVPR 2022): T^2 * mean over rows of
    alpha KL(b_t || b_s) + beta KL(n_t || n_s), with b the (target, rest) probabilities and
    n the softmax over the non-target classes."""
    rows = []
    for s, t, y in zip(student / temperature, teacher / temperature, target.tolist()):
        p_s, p_t = torch.softmax(s, 0), torch.softmax(t, 0)
        b_s = torch.stack((p_s[y], 1 - p_s[y]))
        b_t = torch.stack((p_t[y], 1 - p_t[y]))
        keep = [c for c in range(s.shape[0]) if c != y]
        n_s, n_t = torch.softmax(s[keep], 0), torch.softmax(t[keep], 0)
        tckd = (b_t * (b_t.log() - b_s.log())).sum()
        nckd = (n_t * (n_t.log() - n_s.log())).sum()
        rows.append(alpha * tckd + beta * nckd)
    return temperature**2 * torch.stack(rows).mean()
