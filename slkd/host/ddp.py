"""The student under torchrun: DistributedDataParallel around it, and what DDP leaves to us.

Only the student is wrapped; the teacher stays frozen outside DDP. Modules trained beside the
student (FitNet's regressor, CRD's embeddings, ReviewKD's fusions) stay outside it too: their
gradients are averaged by :func:`average_gradients` after each backward, and their BatchNorm
statistics are made rank 0's with the student's by :func:`share_buffers`. Other state they
update in a step would drift apart in each process, so :func:`wrap_student` refuses it
(:func:`refuse_per_process_state`). Checkpoints hold no DDP prefixes
(:func:`plain_state_dict`), so they load in any number of processes, and the student leaves
DDP before the process group goes (:func:`unwrap_student`).

Every function here is a no-op in a single process (``context.distributed`` false).
"""

from __future__ import annotations

import inspect

import traceback

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from slkd.host.config import ConfigError
from slkd.utils.distributed import DistContext

_STUDENT = "student."
_WRAPPED_STUDENT = "student.module."


def wrap_student(distiller, cfg, context: DistContext, beside: list) -> torch.nn.Module:
    """Under torchrun, put ``distiller.student`` in DDP (a SyncBatchNorm copy with
    ``SLKD.SYNC_BN``) and return the module inside the wrapper; otherwise return the student.

    ``beside``: the modules trained beside the student, refused when they hold per-process
    state. DDP broadcasts no buffers at each forward: the student runs once per view before one
    backward, and a broadcast at the second forward would rewrite BatchNorm statistics that
    autograd saved at the first. Buffers are instead made rank 0's before each evaluation and
    checkpoint (:func:`share_buffers`)."""
    student = distiller.student
    if not context.distributed:
        return student
    refuse_per_process_state(beside, cfg.DISTILLER.TYPE)
    device = context.device
    if cfg.SLKD.SYNC_BN and device.type != "cuda":
        raise ConfigError("SLKD.SYNC_BN needs CUDA devices (torch's SyncBatchNorm does not run on CPUs); set it False")
    if cfg.SLKD.SYNC_BN:
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    device_ids = [device.index] if device.type == "cuda" else None
    distiller.student = DistributedDataParallel(student, device_ids=device_ids, **_no_buffer_sync_at_forward())
    return student


def unwrap_student(distiller) -> None:
    """Put the student back in the distiller in place of its DDP wrapper, so that DDP's
    reducer lets go of the process group while the group is still registered.

    A reducer that outlives ``destroy_process_group`` holds the group's last reference, and
    freeing it destroys the group with the GIL held: under torch 2.11 that joins a gloo
    thread still waiting for the GIL to release its last collective's tensors, and the
    process hangs as it ends (seen in two-process runs on a loaded CPU). The student must
    therefore leave DDP before the group is destroyed."""
    if isinstance(distiller.student, DistributedDataParallel):
        distiller.student = distiller.student.module


def release_frames(error: BaseException) -> None:
    """Clear the local variables of the finished frames in ``error``'s traceback (and in the
    exceptions it chains). An exception raised inside DDP's forward keeps the wrapper alive
    through the frame of ``DistributedDataParallel.forward`` (its ``self``) for as long as
    the exception lives, past :func:`unwrap_student` and past ``destroy_process_group``: the
    hang :func:`unwrap_student` avoids. The traceback still prints every line."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def share_buffers(modules, context: DistContext) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics) of ``modules``."""
    if not context.distributed:
        return
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def average_gradients(parameters: list, context: DistContext) -> None:
    """Average over processes the gradients of ``parameters`` (those trained beside the
    student: DDP averages the student's), in one collective. A process without a gradient for
    a parameter adds zeros; a parameter no process has a gradient for keeps none, so the
    optimizer skips it as it would in one process."""
    if not (context.distributed and parameters):
        return
    here = [p.grad is not None for p in parameters]
    gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flags = torch.tensor(here, dtype=torch.float32, device=parameters[0].device)
    flat = torch.cat([gradient.reshape(-1).float() for gradient in gradients] + [flags])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    *summed, counts = flat.split([p.numel() for p in parameters] + [len(parameters)])
    # with every gradient here, each parameter has one somewhere: no need to read the counts
    # (a host read); methods that leave a parameter without a gradient pay for one
    anywhere = here if all(here) else (counts > 0).tolist()
    for parameter, gradient, total, used in zip(parameters, gradients, summed, anywhere):
        parameter.grad = gradient.copy_(total.view_as(gradient) / context.world_size) if used else None


def refuse_per_process_state(modules, method: str) -> None:
    """ConfigError when ``modules`` (beside the student and teacher) hold state other than
    BatchNorm statistics, i.e. persistent buffers (non-persistent ones, such as SLDLoss's
    temperatures, are constants): state a step may update in each process, which torchrun
    would let drift (CRD's memory bank and normalisation constants)."""
    held = [
        f"{type(owner).__name__}.{name}"
        for module in modules
        for owner in module.modules()
        if not isinstance(owner, torch.nn.modules.batchnorm._BatchNorm)
        for name, _ in owner.named_buffers(recurse=False)
        if name not in owner._non_persistent_buffers_set
    ]
    if held:
        raise ConfigError(
            f"{method} keeps state beside the student ({', '.join(held)}) that each torchrun process would "
            f"update on its own batches: train {method} in one process (slkd-train without torchrun)"
        )


def plain_state_dict(distiller) -> dict:
    """``distiller.state_dict()`` without DDP's ``module.`` in the student's keys, so that a
    checkpoint loads in any number of processes."""
    if not isinstance(distiller.student, DistributedDataParallel):
        return distiller.state_dict()
    return {_replace_prefix(key, _WRAPPED_STUDENT, _STUDENT): value for key, value in distiller.state_dict().items()}


def load_plain_state_dict(distiller, state: dict) -> None:
    """Load what :func:`plain_state_dict` returned, into a student in DDP or not."""
    if isinstance(distiller.student, DistributedDataParallel):
        state = {_replace_prefix(key, _STUDENT, _WRAPPED_STUDENT): value for key, value in state.items()}
    distiller.load_state_dict(state)


def _replace_prefix(key: str, old: str, new: str) -> str:
    return new + key[len(old) :] if key.startswith(old) else key


def _no_buffer_sync_at_forward() -> dict:
    """DDP's keyword that stops it broadcasting buffers at every forward: ``forward_sync_buffers``
    where torch has it (it deprecates ``broadcast_buffers``; buffers are still made rank 0's
    once, when DDP wraps the student), ``broadcast_buffers`` before."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
