"""A CPU stand-in for slkd.host.graphs.CudaGraphBackend.

``capture`` runs the step once for real (that is the step's training) and keeps the closure;
``replay`` runs the closure again and writes its results into the tensors the capture
returned, as a CUDA graph writes into its static outputs. A closure that read anything but
the graph's input tensors (the batch of the captured step, say) would then train on the
wrong data, which the tests compare against eager training.
"""

import contextlib

import torch


class ReplayBackend:
    capture_runs_step = True

    def __init__(self):
        self.captures = 0

    def stream_context(self):
        return contextlib.nullcontext()

    def capture(self, run):
        self.captures += 1
        outputs = run()
        return (run, outputs), outputs

    @staticmethod
    def replay(graph):
        run, outputs = graph
        fresh = run()
        with torch.no_grad():
            _copy_into(outputs, fresh)


def _copy_into(target, source):
    if isinstance(target, torch.Tensor):
        target.copy_(source)
    elif isinstance(target, dict):
        assert target.keys() == source.keys()
        for name in target:
            _copy_into(target[name], source[name])
    else:
        assert len(target) == len(source)
        for a, b in zip(target, source):
            _copy_into(a, b)
