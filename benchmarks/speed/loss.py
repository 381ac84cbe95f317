"""``loss``: the SLD loss of both views, forward and backward, in the released code's style,
as one autograd graph over all temperatures, as slkd computes it (eager, fused, the fused
loss recorded as a CUDA graph, compiled) and, with ``SLKD_RELEASED_SLD_PATH``, the released
module's own; value and gradient differences against the literal implementation."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .common import EPOCH_OFF, EPOCH_ON, GAMMA, TEMPERATURES, Settings, Timer, count_torch_ops, md_table, short_error


def literal_swap(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The released style: a clone, a boolean row mask and advanced-index assignment.

    Boolean indexing makes the number of swapped rows a host value: one host-device
    synchronisation per call on a GPU, which is part of what this reference costs.
    """
    out = logits.clone()
    top = logits.max(dim=1).indices
    rows = top != target
    labels, tops = target[rows], top[rows]
    at_label, at_top = logits[rows, labels], logits[rows, tops]
    out[rows, labels] = at_top
    out[rows, tops] = at_label
    return out


def _literal_kl_term(student, target_logits, temperature):
    """``T^2 * mean_rows KL(softmax(target/T) || softmax(student/T))``, one temperature."""
    log_student = F.log_softmax(student / temperature, dim=1)
    target_probs = F.softmax(target_logits / temperature, dim=1)
    kl = F.kl_div(log_student, target_probs, reduction="none").sum(1).mean()
    return kl * temperature**2


def literal_view_loss(student, teacher, target, epoch, weight=1.0):
    """One view, one temperature at a time, a separate softmax and KL per term (docs/method.md, section 2)."""
    swapped_teacher = literal_swap(teacher, target)
    swapped_student = literal_swap(student, target)  # swapped whatever the epoch, as released
    total = 0.0
    for temperature in TEMPERATURES:
        terms = [_literal_kl_term(student, swapped_teacher, temperature)]
        if epoch > GAMMA:
            terms.append(_literal_kl_term(student, swapped_student, temperature))
        total = total + weight * sum(terms)
    return total


def literal_loss(zw, zs, tw, ts, y, epoch):
    return literal_view_loss(zw, tw, y, epoch) + literal_view_loss(zs, ts, y, epoch)


def gather_swap(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The swap as a column permutation and one gather (no host synchronisation)."""
    top = logits.argmax(dim=1, keepdim=True)
    label = target.view(-1, 1)
    columns = torch.arange(logits.shape[1], device=logits.device).expand_as(logits)
    source = torch.where(columns == label, top, torch.where(columns == top, label, columns))
    return logits.gather(1, source)


class StackedLoss:
    """All temperatures in one ``(K, N, C)`` tensor, gradients by plain autograd (the sketch)."""

    def __init__(self, device, dtype=torch.float32):
        temps = torch.tensor(TEMPERATURES, device=device, dtype=dtype)
        self.inverse = temps.reciprocal().view(-1, 1, 1)
        self.squared = (temps * temps).view(-1, 1)

    def view_loss(self, student, teacher, target, epoch):
        log_q = F.log_softmax(student.unsqueeze(0) * self.inverse, dim=-1)
        log_p = F.log_softmax(gather_swap(teacher, target).unsqueeze(0) * self.inverse, dim=-1)
        rows = (self.squared * (log_p.exp() * (log_p - log_q)).sum(-1)).sum(0)
        if epoch > GAMMA:
            log_s = F.log_softmax(gather_swap(student, target).unsqueeze(0) * self.inverse, dim=-1)
            rows = rows + (self.squared * (log_s.exp() * (log_s - log_q)).sum(-1)).sum(0)
        return rows.mean()

    def __call__(self, zw, zs, tw, ts, y, epoch):
        return self.view_loss(zw, tw, y, epoch) + self.view_loss(zs, ts, y, epoch)


class SlkdLoss:
    """What slkd's SLD distiller does: one ``SLDLoss.terms`` call over both views' rows
    (with ``fused``: its Triton kernels)."""

    def __init__(self, device, fused=False):
        from slkd.losses.sld import SLDLoss

        self.criterion = SLDLoss(temperatures=TEMPERATURES, gamma=GAMMA, fused=fused).to(device)

    def __call__(self, zw, zs, tw, ts, y, epoch):
        terms = self.criterion.terms(torch.cat((zw, zs)), torch.cat((tw, ts)), y.repeat(2), epoch)
        return (terms.teacher_swap_loss.sum() + terms.student_swap_loss.sum()) / y.shape[0]


class ReleasedModuleLoss:
    """The released module's own ``swap`` and ``kd_loss``, summed as its ``forward_train`` does."""

    def __init__(self, module):
        self.module = module

    def __call__(self, zw, zs, tw, ts, y, epoch):
        total = 0.0
        for student, teacher in ((zw, tw), (zs, ts)):
            swapped_teacher = self.module.swap(teacher, y)
            swapped_student = self.module.swap(student, y)
            for temperature in TEMPERATURES:
                total = total + self.module.kd_loss(student, swapped_teacher, swapped_student, y, epoch, temperature)
        return total


def loss_inputs(batch, classes, device, dtype=torch.float32):
    """Two views of student and teacher logits and labels; the label leads in some rows
    (about 70% of teacher rows, 30% of student rows), so both swap branches run."""
    generator = torch.Generator().manual_seed(batch * 1009 + classes)
    target = torch.randint(0, classes, (batch,), generator=generator)

    def logits(scale, lead_share):
        values = torch.randn(batch, classes, generator=generator) * scale
        rows = torch.rand(batch, generator=generator) < lead_share
        values[rows, target[rows]] += 4 * scale
        return values.to(device=device, dtype=dtype)

    zw, zs = logits(2.0, 0.3), logits(2.0, 0.3)
    tw, ts = logits(3.0, 0.7), logits(3.0, 0.7)
    return zw, zs, tw, ts, target.to(device)


def bench_loss(settings: Settings, timer: Timer, shared: dict) -> dict:
    device = settings.device
    implementations = {
        "literal": literal_loss,
        "stacked-autograd": StackedLoss(device),
        "slkd": SlkdLoss(device),
    }
    notes = []
    if "fused" in settings.fast_modes:
        implementations["slkd-fused"] = SlkdLoss(device, fused=True)
    else:
        notes.append(f"slkd-fused: {settings.fast_modes_note}")
    released = shared.get("released_module")
    if released is not None:
        implementations["released"] = ReleasedModuleLoss(released)
    elif shared.get("released_note"):
        notes.append(f"released: {shared['released_note']}")
    compiled = None
    if settings.compile:
        slkd_fn = implementations["slkd"]
        compiled = torch.compile(lambda *a: slkd_fn(*a), dynamic=False, mode=None if settings.compile_mode == "default" else settings.compile_mode)
    else:
        notes.append("slkd-compiled: skipped (" + ("--quick" if settings.quick else "--compile off") + ")")
    if "graphs" in settings.fast_modes:
        notes.append("slkd-fused-graph: slkd-fused's forward and backward recorded once as a CUDA graph and replayed (one launch), as the loss runs inside the step under --cuda-graphs")

    results, checks = [], []
    for batch, classes in settings.loss_sizes:
        size = f"{batch}x{classes}"
        inputs = loss_inputs(batch, classes, device)
        leaves = [tensor.clone().requires_grad_(index < 2) for index, tensor in enumerate(inputs[:4])] + [inputs[4]]
        for epoch in (EPOCH_OFF, EPOCH_ON):
            runs = dict(implementations)
            if compiled is not None:
                runs["slkd-compiled"] = compiled
            reference = None
            runners, timings, extra = {}, {}, {}
            for name, impl in runs.items():
                def run_once(impl=impl):
                    loss = impl(*leaves, epoch)
                    grads = torch.autograd.grad(loss, leaves[:2])
                    return loss, grads

                compile_seconds = None
                if name == "slkd-compiled":
                    tick = time.perf_counter()
                    try:
                        run_once()
                        timer.sync()
                        compile_seconds = time.perf_counter() - tick
                        if settings.cuda:
                            timings[name] = timer.measure(run_once, settings.loss_iters, settings.loss_warmup)
                    except Exception as error:  # compile is optional: record why and go on
                        notes.append(f"slkd-compiled: skipped at {size}, epoch {epoch} ({short_error(error)})")
                        compiled = None
                        continue
                loss, grads = run_once()
                if reference is None:
                    reference = (loss.detach().double().item(), [g.detach().double() for g in grads])
                checks.append(correctness_row(size, epoch, name, loss, grads, reference, float64_difference(impl, name, inputs, epoch)))
                runners[name] = run_once
                extra[name] = {"compile_seconds": compile_seconds, "torch_ops": None if name == "slkd-compiled" else count_torch_ops(run_once)}
            if "graphs" in settings.fast_modes:
                # the fused loss as it runs inside a step under --cuda-graphs: recorded once, replayed
                name = "slkd-fused-graph"
                fused = implementations["slkd-fused"]

                def bound_to_own_leaves(fused=fused, epoch=epoch):
                    own = [tensor.detach().clone().requires_grad_(tensor.requires_grad) for tensor in leaves[:4]] + [leaves[4]]

                    def run_once():
                        loss = fused(*own, epoch)
                        return loss, torch.autograd.grad(loss, own[:2])

                    return run_once

                try:
                    runners[name] = graph_replay(bound_to_own_leaves, device)
                except RuntimeError as error:  # an optional row: record why and go on
                    notes.append(f"{name}: not recorded at {size}, epoch {epoch} ({short_error(error)})")
                else:
                    loss, grads = runners[name]()
                    checks.append(correctness_row(size, epoch, name, loss, grads, reference, None))
                    extra[name] = {"compile_seconds": None, "torch_ops": 0}
            if settings.cuda:
                for name, run_once in runners.items():
                    if name not in timings:
                        timings[name] = timer.measure(run_once, settings.loss_iters, settings.loss_warmup)
            else:  # a CPU is often shared: interleave, so that a busy spell hits every implementation alike
                timings = timer.measure_interleaved(runners, settings.loss_iters, settings.loss_warmup)
            for name in runners:
                results.append({"size": size, "batch": batch, "classes": classes, "epoch": epoch, "pseudo_teacher": epoch > GAMMA, "impl": name, **extra[name], **timings[name]})
    literal = {(r["size"], r["epoch"]): r for r in results if r["impl"] == "literal"}
    for row in results:
        row["x_literal"] = row["median_ms"] / literal[(row["size"], row["epoch"])]["median_ms"]
        row["x_literal_min"] = row["min_ms"] / literal[(row["size"], row["epoch"])]["min_ms"]
    max_diff = {}
    for check in checks:
        if check["impl"] != "literal":
            scale = max(1.0, abs(check["literal_value"]))
            max_diff[check["impl"]] = max(max_diff.get(check["impl"], 0.0), check["abs_diff_fp32"] / scale)
    return {
        "status": "ok",
        "what": "SLD loss L(weak) + L(strong), unweighted, forward + backward (autograd.grad w.r.t. both views' student logits)",
        "results": results,
        "correctness": checks,
        "max_rel_diff_vs_literal_fp32": max_diff,
        "notes": notes,
    }


def correctness_row(size, epoch, name, loss, grads, reference, abs_diff_fp64) -> dict:
    """One implementation's loss and gradients against ``reference`` (the literal loss's
    value and gradients, float64 copies of its float32 results)."""
    value = loss.detach().double().item()
    return {
        "size": size,
        "epoch": epoch,
        "impl": name,
        "value": value,
        "literal_value": reference[0],
        "abs_diff_fp32": abs(value - reference[0]),
        "grad_max_abs_diff_fp32": max((g.detach().double() - r).abs().max().item() for g, r in zip(grads, reference[1])),
        "abs_diff_fp64": abs_diff_fp64,
    }


def graph_backend(device: torch.device):
    """slkd's CUDA-graph backend (the trainer's, under --cuda-graphs) for ``device``."""
    from slkd.host.graphs import CudaGraphBackend

    return CudaGraphBackend(device)


def graph_replay(make_run, device: torch.device):
    """``make_run()`` (a closure of no arguments that returns tensors) recorded as one CUDA
    graph: returns a closure that replays it and returns the recorded outputs, rewritten in
    place. ``make_run`` is called on the recording stream, so that the closure's tensors (its
    autograd leaves, whose gradients autograd hands over on the stream they were first used
    on) belong to that stream: a leaf first used on the default stream makes the recording
    fail."""
    from slkd.host.graphs import WARMUP_STEPS

    backend = graph_backend(device)
    with backend.stream_context():
        run_once = make_run()
        for _ in range(WARMUP_STEPS):  # lazy set-up (Triton's compilation, the allocator) outside the recording, as the trainer does
            run_once()
        graph, outputs = backend.capture(run_once)

    def replay():
        backend.replay(graph)
        return outputs

    return replay


def float64_difference(impl, name, inputs, epoch):
    """|impl - literal| of the loss value in float64 (None where the impl has no float64 path)."""
    if name in ("slkd-compiled",):
        return None
    doubles = [tensor.double() if tensor.is_floating_point() else tensor for tensor in inputs]
    if name == "stacked-autograd":
        impl = StackedLoss(doubles[0].device, torch.float64)
    if name == "slkd-fused":
        impl = SlkdLoss(doubles[0].device, fused=True)
    with torch.no_grad():
        value = impl(*doubles, epoch)
        reference = literal_loss(*doubles, epoch)
    return abs(float(value) - float(reference))


def loss_tables(section) -> str:
    impls = []
    for row in section["results"]:
        if row["impl"] not in impls:
            impls.append(row["impl"])
    by_key = {}
    for row in section["results"]:
        by_key.setdefault((row["size"], row["epoch"]), {})[row["impl"]] = row
    headers = ["size", "epoch", "pseudo-teacher"] + [f"{name} ms" for name in impls] + ["slkd / literal", "slkd / literal (min times)"]
    rows = []
    for (size, epoch), cells in by_key.items():
        slkd = cells.get("slkd")
        rows.append([size, epoch, "on" if epoch > GAMMA else "off"] + [cells[n]["median_ms"] if n in cells else None for n in impls] + [slkd["x_literal"] if slkd else None, slkd["x_literal_min"] if slkd else None])
    text = md_table(headers, rows)
    ops = [[size, epoch] + [cells[n].get("torch_ops") if n in cells else None for n in impls] for (size, epoch), cells in by_key.items()]
    text += "\n\nTorch ops per call, forward and backward (views left out; slkd-fused adds 2 Triton launches; slkd-fused-graph is one graph launch):\n\n"
    text += md_table(["size", "epoch"] + impls, ops)
    diffs = [[c["size"], c["epoch"], c["impl"], c["value"], c["abs_diff_fp32"], c["grad_max_abs_diff_fp32"], c["abs_diff_fp64"]] for c in section["correctness"] if c["impl"] != "literal"]
    text += "\n\nCorrectness against the literal implementation (same inputs):\n\n"
    text += md_table(["size", "epoch", "impl", "loss", "|diff| fp32", "max |grad diff| fp32", "|diff| fp64"], diffs)
    return text
