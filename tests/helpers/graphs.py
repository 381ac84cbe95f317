"""A CPU stand-in for slkd.host.graphs.CudaGraphBackend.

``capture`` runs the step once for real (that is the step's training) and keeps the closure;
``replay`` runs the closure again and writes its results into the tensors the capture
returned, as a CUDA graph writes into its static outputs. A closure that read anything but
the graph's input tensors (the batch of the captured step, say) would then train on the
wrong data, which the tests compare against eager training.

A real graph also freezes the host values the step used when it was recorded (the learning
rate the SGD kernel was launched with, say), where re-running the closure reads them anew.
``frozen``, when given, returns those host values: the stand-in records them at capture and
fails a replay at which they differ, as the real graph would silently train with the old ones.
"""

import contextlib

import torch


class ReplayBackend:
    capture_runs_step = True

    def __init__(self, frozen=None):
        self.captures = 0
        self.frozen = frozen

    def stream_context(self):
        return contextlib.nullcontext()

    def capture(self, run):
        self.captures += 1
        held = self.frozen() if self.frozen else None
        outputs = run()
        return (run, outputs, held), outputs

    def replay(self, graph):
        run, outputs, held = graph
        if self.frozen:
            assert self.frozen() == held, f"replayed with {self.frozen()} but recorded with {held}"
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


def replay_graphs_in_trainer(monkeypatch, backend_for=lambda cfg: ReplayBackend(), warmup_steps=1):
    """Make ``SLKDTrainer`` build its :class:`slkd.host.graphs.StepGraphs` over the stand-in
    ``backend_for(cfg)`` when ``SLKD.CUDA_GRAPHS`` is on, on any device (a CPU included)."""
    from slkd.host import graphs

    def step_graphs_for(cfg, context):
        if not cfg.SLKD.CUDA_GRAPHS:
            return None
        return graphs.StepGraphs(backend_for(cfg), warmup_steps=warmup_steps)

    monkeypatch.setattr(graphs, "step_graphs_for", step_graphs_for)
