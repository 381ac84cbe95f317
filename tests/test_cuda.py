"""On a GPU: the same losses as on the CPU, and training steps free of host-device syncs.
Skipped where torch sees no GPU (CI); run on a lent GPU with benchmarks/gpu_check.sh."""

import pytest
import torch

from slkd.losses.sld import SLDLoss
from tests.helpers.tiny import tiny_cfg, tiny_trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("epoch", [1, 200])
@pytest.mark.parametrize("detach", [False, True])
def test_sld_on_gpu_matches_cpu(epoch, detach):
    generator = torch.Generator().manual_seed(epoch)
    student = torch.randn(128, 100, generator=generator, requires_grad=True)
    teacher = torch.randn(128, 100, generator=generator)
    target = torch.randint(0, 100, (128,), generator=generator)
    criterion = SLDLoss(gamma=150, detach_pseudo_teacher=detach)
    cpu = criterion(student, teacher, target, epoch)
    (cpu_grad,) = torch.autograd.grad(cpu, student)
    gpu_student = student.detach().cuda().requires_grad_()
    gpu = criterion.cuda()(gpu_student, teacher.cuda(), target.cuda(), epoch)
    (gpu_grad,) = torch.autograd.grad(gpu, gpu_student)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gpu_grad.cpu(), cpu_grad, rtol=1e-4, atol=1e-7)


def _steps_without_sync(trainer, images, target, extras, epoch, steps=3):
    """``steps`` training steps under ``set_sync_debug_mode("error")``; the last loss."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            _, loss, _, _ = trainer.step(images, target, extras, epoch=epoch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return loss


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
@pytest.mark.parametrize("fused", [False, True])
def test_training_step_makes_no_host_device_sync(tmp_path, amp, fused):
    cfg = tiny_cfg(tmp_path)
    cfg.SLKD.AMP = amp
    cfg.SLKD.FUSED_LOSS = fused
    from slkd.utils.distributed import DistContext

    trainer = tiny_trainer(cfg, context=DistContext(device=torch.device("cuda", 0)))
    trainer.distiller.criterion.fused = fused
    trainer.distiller.train()
    images, target, extras = trainer.to_device(next(iter(trainer.train_loader)))
    trainer.step(images, target, extras, epoch=2)  # warm-up: allocator, cuDNN, Triton
    assert torch.isfinite(_steps_without_sync(trainer, images, target, extras, epoch=2)).item()


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_cuda_graph_training_equals_eager_training(tmp_path, amp, monkeypatch):
    """Real CUDA graphs: 4 epochs of batches 10, 10, 4 (new keys at epochs 2 and 3, a graph
    for the small batch) give the eager run's metrics and weights, and replays make no sync."""
    import json
    from pathlib import Path

    from slkd.utils.distributed import DistContext
    from tests.helpers import tiny

    # SLD's kind of key (epochs 3 and 4 share one), so that the small batch gets its graph
    monkeypatch.setattr(tiny.TinyDistiller, "graph_key", lambda self, epoch: self.criterion.student_swap_on(epoch), raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # no atomics: runs comparable
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)

    runs = {}
    for name in ("eager", "graphs"):
        cfg = tiny_cfg(tmp_path / name, epochs=4, batch=10)
        cfg.SLKD.AMP = amp
        cfg.SLKD.CUDA_GRAPHS = name == "graphs"
        trainer = tiny_trainer(cfg, context=DistContext(device=torch.device("cuda", 0)))
        if amp == "fp16":  # a high scale doubled after every good step: skipped steps, a moving scale
            trainer.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**20, growth_interval=1)
        if name == "graphs":
            trainer.step_graphs.warmup_steps = 1
        trainer.train()
        lines = (tmp_path / name / "tiny" / "run" / "metrics.jsonl").read_text().splitlines()
        metrics = [{k: v for k, v in json.loads(line).items() if not k.endswith(("seconds", "per_second", "memory_mib"))} for line in lines]
        runs[name] = (metrics, {k: v.detach().cpu().clone() for k, v in trainer.distiller.student.state_dict().items()}, trainer)
    for eager, graphed in zip(runs["eager"][0], runs["graphs"][0], strict=True):
        assert graphed.keys() == eager.keys()
        for key in eager:
            assert graphed[key] == pytest.approx(eager[key], rel=1e-5, abs=1e-6), key
    for key, value in runs["eager"][1].items():
        torch.testing.assert_close(runs["graphs"][1][key], value, rtol=1e-5, atol=1e-6, msg=key)
    if amp == "fp16":  # the scaler's state lives on the device and the replays updated it
        assert runs["graphs"][2].scaler.get_scale() == runs["eager"][2].scaler.get_scale() < 2.0**32
    trainer = runs["graphs"][2]
    assert trainer.step_graphs.replays > 0
    recorded_batches = {signature[1][0][0][0] for signature in trainer.step_graphs.captured}
    assert recorded_batches == {10, 4}, recorded_batches  # the full batches' graph and the small one's
    images, target, extras = trainer.to_device(next(iter(trainer.train_loader)))
    assert torch.isfinite(_steps_without_sync(trainer, images, target, extras, epoch=4)).item()
    assert Path(tmp_path / "graphs" / "tiny" / "run" / "summary.json").is_file()


def _replayed_equals_eager(fn, make_inputs):
    """Record ``fn`` on the inputs of seed 0 as a CUDA graph, replay it on those of seed 1,
    and compare with ``fn`` run eagerly on seed 1's inputs."""
    static = make_inputs(0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        recorded = fn(*static)
    fresh = make_inputs(1)
    with torch.no_grad():
        for target, source in zip(static, fresh):
            target.copy_(source)
    graph.replay()
    expected = fn(*fresh)
    for name, value in expected.items():
        torch.testing.assert_close(recorded[name], value, rtol=1e-5, atol=1e-6, msg=name)


def _logits(seed, count, grad=()):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(64, 100, generator=generator).cuda() * 3 for _ in range(count)]
    target = torch.randint(0, 100, (64,), generator=generator).cuda()
    return [t.requires_grad_(i in grad) for i, t in enumerate(tensors)] + [target]


@pytest.mark.parametrize("fused", [False, True])
def test_sld_loss_and_gradient_replay_in_a_cuda_graph(fused):
    criterion = SLDLoss(gamma=150, fused=fused).cuda()

    def fn(student, teacher, target):
        loss = criterion(student, teacher, target, 200)
        (grad,) = torch.autograd.grad(loss, student)
        return {"loss": loss.detach(), "grad": grad}

    _replayed_equals_eager(fn, lambda seed: _logits(seed, 2, grad=(0,)))


def test_mlkd_losses_replay_in_a_cuda_graph():
    from slkd.losses.mlkd import mlkd_losses

    def fn(student_weak, student_strong, teacher_weak, teacher_strong, target):
        losses = mlkd_losses(student_weak, student_strong, teacher_weak, teacher_strong, target,
                             base_temperature=4.0, ce_weight=0.1, kd_weight=0.9)  # fmt: skip
        return {name: value.detach() for name, value in losses.items()}

    _replayed_equals_eager(fn, lambda seed: _logits(seed, 4))



CAPTURE_A_SYNC = """
import torch
from slkd.host import graphs

backend = graphs.CudaGraphBackend(torch.device("cuda", 0))
value = torch.ones(4, device="cuda")
with backend.stream_context():
    try:
        backend.capture(lambda: value * float(value.sum()))
    except graphs.StepCaptureError as error:
        print(error)
"""


def test_a_step_that_synchronises_cannot_be_recorded_and_the_error_names_the_fix():
    """In a process of its own, so that the failed capture cannot upset this one's CUDA context."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CAPTURE_A_SYNC], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "could not record the training step" in done.stdout and "set SLKD.CUDA_GRAPHS False" in done.stdout, done.stdout


def test_device_views_on_gpu_equal_the_pil_views_to_the_bit():
    """SLKD.DEVICE_VIEWS on a GPU: CUDA's division by a python number (a reciprocal) and any
    other kernel difference would show here, where the CPU tests cannot see them."""
    from slkd.host.data import SeededItems, SyntheticCIFAR100
    from slkd.host.device_views import DeviceViews
    from slkd.host.views import Cifar100TwoViews

    dataset = SyntheticCIFAR100(256, Cifar100TwoViews(), seed=2)
    weak, strong = DeviceViews(dataset.data, 3, "cuda").views_of(5, range(256))
    pairs = [SeededItems(dataset, 3)[(5, index)][0] for index in range(256)]
    assert torch.equal(weak.cpu(), torch.stack([pil_weak for pil_weak, _ in pairs]))
    assert torch.equal(strong.cpu(), torch.stack([pil_strong for _, pil_strong in pairs]))


def test_device_views_on_gpu_make_no_host_device_sync():
    from slkd.host.data import SyntheticCIFAR100
    from slkd.host.device_views import DeviceViews, draw_batch

    device_views = DeviceViews(SyntheticCIFAR100(128, None, seed=0).data, 0, "cuda")
    draws = [draw_batch(device_views.views, 0, epoch, range(64)).pin_memory() for epoch in (1, 2)]
    device_views.make(draws[0])  # warm-up: allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        weak, strong = device_views.make(draws[1])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert weak.is_cuda and strong.shape == (64, 3, 32, 32)


def test_device_views_on_gpu_feed_steps_without_host_device_sync(tmp_path):
    """SLKD.DEVICE_VIEWS in the trainer: making the views (to_device) and the steps on them."""
    from slkd.utils.distributed import DistContext

    cfg = tiny_cfg(tmp_path)
    cfg.SLKD.DEVICE_VIEWS = True
    trainer = tiny_trainer(cfg, context=DistContext(device=torch.device("cuda", 0)), random_views=True)
    trainer.distiller.train()
    batch = next(iter(trainer.train_loader))  # the draws, made and pinned by the loader
    trainer.step(*trainer.to_device(batch), epoch=2)  # warm-up: allocator, cuDNN
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            result = trainer.step(*trainer.to_device(batch), epoch=2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(result.loss).item()
