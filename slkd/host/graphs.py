"""Whole-step CUDA graphs for slkd's trainer (``SLKD.CUDA_GRAPHS``).

At batch 64 and 32x32 images a training step is a few hundred small kernels, and the GPU
waits on the host that launches them one by one. With CUDA graphs the trainer records the
whole step once (both networks' forward passes, the loss, the backward pass, the SGD update)
and from then on launches it as one graph. A replay runs the kernels the eager step runs, on
the same parameters, gradients, BatchNorm statistics and optimizer state, so what is trained
does not change.

A step is identified by its *signature*: the distiller's graph key for the epoch (see
:func:`graph_key`), the learning rates, and the shapes, dtypes and strides of the batch's
tensors. The first ``warmup_steps`` steps of a signature run eagerly (lazy set-up: cuDNN's
autotuning, Triton's compilation, the optimizer's momentum buffers), the next one is captured
and replayed, and each later one copies its batch into the graph's input tensors and replays.
A smaller last batch of an epoch has its own signature and graph. At the first step of a new
graph key (learning rates only decay; SLD's pseudo-teacher switches on once) the graphs of the
older keys are released, so their memory is free before the new ones are recorded.

Everything runs on one side stream of the device (a capture cannot run on the default
stream), entered and left around each step with stream waits, so the rest of the trainer
is unaware of it. The step function must make no host-device synchronisation (slkd's SLD and
MLKD make none, nor does fp16's gradient scaler with the trainer's fused SGD, which hands the
scaler's inf flag to the update kernel as a tensor); a capture that hits one stops with an
error that names the setting to turn off.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Callable

import torch

from slkd.errors import ConfigError, StepCaptureError

WARMUP_STEPS = 3


def step_graphs_for(cfg, context):
    """The :class:`StepGraphs` of a run on ``context`` (its device and process group) when
    ``SLKD.CUDA_GRAPHS`` is on, else None; ConfigError where graphs cannot be recorded."""
    if not cfg.SLKD.CUDA_GRAPHS:
        return None
    device = context.device
    if device.type != "cuda":
        raise ConfigError(f"SLKD.CUDA_GRAPHS records CUDA graphs, this run is on {device.type}: set SLKD.CUDA_GRAPHS False (or drop --cuda-graphs)")
    if context.distributed:
        raise ConfigError("SLKD.CUDA_GRAPHS is not available under torchrun yet (DDP's gradient hooks are not recorded): set SLKD.CUDA_GRAPHS False")
    return StepGraphs(CudaGraphBackend(device))


def graph_key(distiller, epoch: int):
    """What of ``epoch`` a distiller's step depends on: its ``graph_key(epoch)`` when it has
    one (SLD: whether the pseudo-teacher term is on; MLKD: nothing), else the epoch itself
    (a new graph every epoch, right for losses with a warm-up such as DKD's)."""
    method = getattr(distiller, "graph_key", None)
    return method(epoch) if callable(method) else epoch


class CapturedStep:
    """One recorded step: its graph, the input tensors it reads, the outputs it writes."""

    def __init__(self, graph, inputs: list, outputs):
        self.graph = graph
        self.inputs = inputs
        self.outputs = outputs


class CudaGraphBackend:
    """Capture and replay with ``torch.cuda.CUDAGraph`` on a side stream of ``device``."""

    capture_runs_step = False  # recording launches nothing: the captured step is then replayed

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def stream_context(self):
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            yield
        current.wait_stream(self.stream)

    def capture(self, run: Callable[[], Any]):
        """``(graph, outputs)`` of ``run`` recorded on the side stream. ``thread_local``: the
        loader's pin-memory thread may allocate pinned memory meanwhile."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                outputs = run()
        except RuntimeError as error:
            raise StepCaptureError(
                f"SLKD.CUDA_GRAPHS could not record the training step ({str(error).splitlines()[0]}); the "
                "step probably synchronises with the host (a distiller or loss that reads a value from the device): "
                "set SLKD.CUDA_GRAPHS False"
            ) from error
        return graph, outputs

    @staticmethod
    def replay(graph) -> None:
        graph.replay()



class StepGraphs:
    """Runs training steps eagerly, records them, or replays them (see the module docstring).

    Args:
        backend: :class:`CudaGraphBackend`, or a stand-in with the same methods (tests).
        warmup_steps: eager steps of a signature before it is recorded.
    """

    def __init__(self, backend, warmup_steps: int = WARMUP_STEPS):
        self.backend = backend
        self.warmup_steps = int(warmup_steps)
        self.captured: dict = {}
        self.eager_steps: Counter = Counter()
        self.replays = 0
        self.key = None

    def run(self, key, inputs, step: Callable):
        """``step(*inputs)``'s outputs, computed eagerly or by a graph of ``(key, inputs)``.

        ``inputs`` is a tuple of tensors, lists/tuples of tensors and dicts of tensors;
        ``step`` must read its batch only from its arguments.
        """
        flat, rebuild = _flatten(inputs)
        signature = (key, tuple((tuple(t.shape), t.dtype, t.stride(), t.device) for t in flat))
        if key != self.key:
            self._release_other_keys(key)
            self.key = key
        with self.backend.stream_context():
            captured = self.captured.get(signature)
            if captured is None:
                if self.eager_steps[signature] < self.warmup_steps:
                    self.eager_steps[signature] += 1
                    return step(*inputs)
                captured = self._capture(flat, rebuild, step)
                self.captured[signature] = captured
                if self.backend.capture_runs_step:
                    return captured.outputs
            else:
                for static, value in zip(captured.inputs, flat):
                    static.copy_(value)
            self.backend.replay(captured.graph)
            self.replays += 1
            return captured.outputs

    def _capture(self, flat: list, rebuild, step: Callable) -> CapturedStep:
        static = [tensor.detach().clone() for tensor in flat]  # outside the graph's memory
        graph, outputs = self.backend.capture(lambda: step(*rebuild(static)))
        return CapturedStep(graph, static, outputs)

    def _release_other_keys(self, key) -> None:
        self.captured = {signature: graph for signature, graph in self.captured.items() if signature[0] == key}
        self.eager_steps = Counter({signature: n for signature, n in self.eager_steps.items() if signature[0] == key})


def _flatten(inputs) -> tuple[list, Callable]:
    """The tensors of a nest of tuples, lists and dicts, and a function that rebuilds the
    nest from a list of the same length."""
    flat: list = []

    def walk(node):
        if isinstance(node, torch.Tensor):
            flat.append(node)
            return len(flat) - 1
        if isinstance(node, (list, tuple)):
            return type(node), [walk(child) for child in node]
        if isinstance(node, dict):
            return dict, {name: walk(child) for name, child in node.items()}
        raise TypeError(f"step inputs hold tensors, lists, tuples and dicts, got {type(node).__name__}")

    spec = walk(inputs)

    def build(node, tensors):
        if isinstance(node, int):
            return tensors[node]
        kind, children = node
        if kind is dict:
            return {name: build(child, tensors) for name, child in children.items()}
        return kind(build(child, tensors) for child in children)

    return flat, lambda tensors: build(spec, tensors)
