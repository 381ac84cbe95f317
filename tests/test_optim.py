"""slkd.host.optim: mdistiller's SGD with momentum buffers made up front, which keeps torch's
fused SGD right when fp16's gradient scaler skips its first step, and changes no update."""

import copy

import pytest
import torch
from yacs.config import CfgNode as CN

from slkd.host import optim
from slkd.host.config import ConfigError

HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _solver(**overrides):
    node = CN({"TYPE": "SGD", "LR": 0.1, "MOMENTUM": 0.9, "WEIGHT_DECAY": 5e-4})
    node.update(overrides)
    return node


def _parameters(seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(4, 3, 3, 3, generator=generator).contiguous(memory_format=torch.channels_last)
    return [torch.nn.Parameter(weight.to(device)), torch.nn.Parameter(torch.randn(7, generator=generator).to(device))]


def _gradients(step, parameters):
    """Random gradients in their parameters' layout (autograd's layout contract)."""
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.empty_like(p).copy_(torch.randn(p.shape, generator=generator).to(p.device)) for p in parameters]


def test_momentum_buffers_start_as_zeros_in_the_parameters_layout():
    parameters = _parameters()
    optimizer = optim.sgd(parameters, _solver(), fused=False)
    for parameter in parameters:
        buffer = optimizer.state[parameter]["momentum_buffer"]
        assert torch.equal(buffer, torch.zeros_like(parameter)) and buffer.stride() == parameter.stride()
    assert optimizer.state_dict()["state"].keys() == {0, 1}  # saved in checkpoints like torch's own
    assert not optim.sgd(_parameters(), _solver(MOMENTUM=0.0), fused=False).state  # no momentum, no buffers


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [False, True], ids=["for-loop", "fused"])
def test_updates_equal_torch_sgd_bit_for_bit(fused, device):
    ours, theirs = _parameters(device=device), _parameters(device=device)
    solver = _solver()
    ours_optimizer = optim.sgd(ours, solver, fused=fused)
    torch_optimizer = torch.optim.SGD(theirs, lr=solver.LR, momentum=solver.MOMENTUM, weight_decay=solver.WEIGHT_DECAY, fused=fused or None)
    for step in range(4):
        for params, optimizer in ((ours, ours_optimizer), (theirs, torch_optimizer)):
            for parameter, gradient in zip(params, _gradients(step, params)):
                parameter.grad = gradient.clone()
            optimizer.step()
        for mine, reference in zip(ours, theirs):
            assert torch.equal(mine, reference), step
            assert torch.equal(ours_optimizer.state[mine]["momentum_buffer"], torch_optimizer.state[reference]["momentum_buffer"])


def _poison_empty_like(monkeypatch):
    """Memory from ``empty_like`` holds NaN, as freed memory may hold anything."""
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *args, **kwargs: empty_like(*args, **kwargs).fill_(float("nan")))


def _scaled_step(parameters, optimizer, scaler, factor):
    optimizer.zero_grad()
    loss = sum((p * factor).sum() for p in parameters)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def test_a_first_step_skipped_by_the_gradient_scaler_leaves_the_fused_sgd_right(monkeypatch):
    """fp16's first steps often overflow. Torch's fused SGD makes its buffers with empty_like
    at the first step and its kernel skips them on an inf gradient: without buffers made up
    front, the next step would add the NaN this test leaves in freed memory to the weights."""
    _poison_empty_like(monkeypatch)
    parameters = _parameters()
    start = [p.detach().clone() for p in parameters]
    optimizer = optim.sgd(parameters, _solver(WEIGHT_DECAY=0.0), fused=True)
    scaler = torch.amp.GradScaler("cpu")
    _scaled_step(parameters, optimizer, scaler, float("inf"))  # skipped: the scale halves
    assert scaler.get_scale() == 2.0**15
    for parameter, before in zip(parameters, start):
        assert torch.equal(parameter, before)
        assert torch.equal(optimizer.state[parameter]["momentum_buffer"], torch.zeros_like(parameter))
    _scaled_step(parameters, optimizer, scaler, 1.0)  # the gradient is ones: a first step
    for parameter, before in zip(parameters, start):
        torch.testing.assert_close(parameter.detach(), before - 0.1, rtol=0, atol=1e-6)
        assert torch.equal(optimizer.state[parameter]["momentum_buffer"], torch.ones_like(parameter))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "for-loop"])
def test_the_gradient_scaler_reads_its_inf_flag_on_the_host_only_for_an_unfused_sgd(fused, monkeypatch):
    """What lets CUDA graphs record fp16 steps: with the fused SGD (the trainer's on a GPU)
    GradScaler.step and update hand the inf flag over as a tensor; with the for-loop SGD the
    scaler reads it on the host (``.item()``, a sync on a GPU) to decide whether to step."""
    parameters = _parameters()
    optimizer = optim.sgd(parameters, _solver(), fused=fused)
    scaler = torch.amp.GradScaler("cpu")
    _scaled_step(parameters, optimizer, scaler, 1.0)  # the scaler's lazy set-up
    optimizer.zero_grad()
    scaler.scale(sum(p.sum() for p in parameters)).backward()
    reads = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def read(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    scaler.step(optimizer)
    scaler.update()
    monkeypatch.undo()
    assert bool(reads) is not fused, reads


def test_a_loaded_state_gets_the_buffers_it_lacks():
    """A state saved before a parameter had its first gradient has no buffer for it."""
    parameters = _parameters()
    torch_optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9)
    parameters[1].grad = torch.ones_like(parameters[1])
    torch_optimizer.step()  # a buffer for the second parameter only
    optimizer = optim.sgd(parameters, _solver(), fused=False)
    optimizer.load_state_dict(torch_optimizer.state_dict())
    assert "momentum_buffer" not in optimizer.state[parameters[0]]
    optim.fill_momentum_buffers(optimizer)
    assert torch.equal(optimizer.state[parameters[0]]["momentum_buffer"], torch.zeros_like(parameters[0]))
    assert torch.equal(optimizer.state[parameters[1]]["momentum_buffer"], torch.ones_like(parameters[1]))


def test_a_state_saved_by_an_unfused_sgd_loads_into_a_fused_one_and_steps_alike():
    """A checkpoint of a CPU run (unfused SGD) resumed on a GPU (fused): the optimizer stays
    fused, so fp16's gradient scaler can hand it its scale (torch's load_state_dict would turn
    it unfused, and the step would fail), and its updates equal the unfused optimizer's."""
    saved_parameters = _parameters()
    unfused = optim.sgd(saved_parameters, _solver(), fused=False)
    for parameter, gradient in zip(saved_parameters, _gradients(0, saved_parameters)):
        parameter.grad = gradient
    unfused.step()
    fused_parameters = [torch.nn.Parameter(p.detach().clone()) for p in saved_parameters]
    fused = optim.sgd(fused_parameters, _solver(), fused=True)
    optim.load_state(fused, copy.deepcopy(unfused.state_dict()))  # as read from a checkpoint: its own tensors
    assert fused.param_groups[0]["fused"] is True
    for optimizer, parameters in ((unfused, saved_parameters), (fused, fused_parameters)):
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        scaler.scale(torch.ones(()))  # the scale tensor is made here
        for parameter, gradient in zip(parameters, _gradients(1, parameters)):
            parameter.grad = gradient * 4.0
        scaler.step(optimizer)
    for a, b in zip(saved_parameters, fused_parameters):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_other_solvers_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="SOLVER.TYPE 'Adam' is not supported: slkd's trainer uses SGD"):
        optim.sgd(_parameters(), _solver(TYPE="Adam"), fused=False)
