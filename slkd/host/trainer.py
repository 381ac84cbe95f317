"""slkd's trainer: two views or one, any device, AMP, torchrun, crash-safe checkpoints.

Registered in mdistiller's ``trainer_dict`` as ``"slkd"`` and built with mdistiller's
arguments ``(experiment_name, distiller, train_loader, val_loader, cfg)``, so the host's
``tools/train.py`` can run it. From the host's loaders it keeps only the datasets: it sets
their transform to one or two views (what the distiller's ``num_views`` asks for) and feeds
them with its own loaders (:mod:`slkd.host.data`).

A training step makes no host-device synchronisation (checked on GPUs with fp32 and bf16;
fp16, whose gradient scaler the fused SGD lets decide on the device whether to step, is not
checked on a GPU yet): each step writes its loss terms and hit counts into a row of an
on-device buffer, and the epoch's sums, accuracies and first non-finite step are read from
it once, at the end of the epoch. A non-finite loss stops the run there, before the epoch's
checkpoint, naming the epoch, iteration and loss terms. With
``SLKD.CUDA_GRAPHS`` steps are recorded and replayed as CUDA graphs (:mod:`slkd.host.graphs`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from slkd.host import data, graphs, optim
from slkd.host.config import ConfigError, validate_run_options
from slkd.utils import checkpoint
from slkd.utils.distributed import DistContext, all_reduce_sum
from slkd.utils.records import RunRecord, environment
from slkd.utils.settings import EXECUTION_KEYS, changed_settings


TOP_K = 5  # accuracies are reported at top-1 and top-5

#: Config keys (and nodes) a resumed run may change: how it is executed, not what it trains,
#: and SOLVER.EPOCHS, to train a run further. Any other change is refused by ``--resume``.
RESUME_MAY_CHANGE = ("SOLVER.EPOCHS", *EXECUTION_KEYS)


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; the message names epoch, iteration and loss terms."""


class SLKDTrainer:
    """Trains ``distiller`` for ``cfg.SOLVER.EPOCHS`` epochs and records everything.

    Args:
        experiment_name: run folder under ``cfg.LOG.PREFIX`` (mdistiller's convention).
        distiller: an mdistiller ``Distiller`` (a ``DataParallel`` around one is unwrapped).
        train_loader, val_loader: loaders whose ``.dataset`` is used.
        cfg: the merged config, with the ``SLKD`` node.
        context: process placement under torchrun; defaults to one process on the
            distiller's device.
        argv: the command line to record.
        host_package: the imported ``mdistiller`` package, for the environment record (the
            one imported in this process when not given).
    """

    def __init__(self, experiment_name, distiller, train_loader, val_loader, cfg, *, context=None, argv=None, host_package=None):
        validate_run_options(cfg)
        self.cfg = cfg
        host_package = host_package or sys.modules.get("mdistiller")  # mdistiller's tools/train.py passes none
        distiller = _unwrap_data_parallel(distiller)
        self.context = context or DistContext(device=_device_of(distiller))
        self.device = self.context.device
        configure_backends(cfg, self.device.type)  # also under mdistiller's tools/train.py
        _check_fused_loss_device(distiller, self.device)
        self.num_views = int(getattr(distiller, "num_views", 1))
        self.channels_last = bool(cfg.SLKD.CHANNELS_LAST)
        self.distiller = distiller.to(self.device)
        if self.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        self.student = self.distiller.student
        self.extra_modules = [module for name, module in self.distiller.named_children() if name not in ("student", "teacher")]
        self._wrap_student_for_ddp()

        data.use_views(train_loader.dataset, cfg.DATASET.TYPE, self.num_views)
        ranks = {"world_size": self.context.world_size, "rank": self.context.rank, "device": self.device}
        self.train_loader = data.train_loader(train_loader.dataset, cfg, **ranks)
        self.val_loader = data.test_loader(val_loader.dataset, cfg, **ranks)

        # fused on a GPU: one kernel per update, and fp16's scaler never reads its inf flag on the host
        learnable = list(self.distiller.get_learnable_parameters())
        self.optimizer = optim.sgd(learnable, cfg.SOLVER, fused=self.device.type == "cuda")
        student_parameters = {id(parameter) for parameter in self.student.parameters()}
        # trained beside the student (FitNet's regressor, CRD's embeddings, ...): outside DDP, averaged by hand
        self.extra_parameters = [parameter for parameter in learnable if id(parameter) not in student_parameters]
        self.step_graphs = self._step_graphs()
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.SLKD.AMP)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.SLKD.AMP == "fp16" else None
        self.best_acc = -1.0
        self.record = RunRecord(os.path.join(cfg.LOG.PREFIX, experiment_name), enabled=self.context.is_main)
        self.argv = list(argv if argv is not None else sys.argv)
        self.host_package = host_package
        self.writer = None

    # ----------------------------------------------------------------- set-up
    def _step_graphs(self):
        """:class:`slkd.host.graphs.StepGraphs` when ``SLKD.CUDA_GRAPHS`` is on, else None."""
        if not self.cfg.SLKD.CUDA_GRAPHS:
            return None
        if self.device.type != "cuda":
            raise ConfigError(f"SLKD.CUDA_GRAPHS records CUDA graphs, this run is on {self.device.type}: set SLKD.CUDA_GRAPHS False (or drop --cuda-graphs)")
        if self.context.distributed:
            raise ConfigError("SLKD.CUDA_GRAPHS is not available under torchrun yet (DDP's gradient hooks are not recorded): set SLKD.CUDA_GRAPHS False")
        return graphs.StepGraphs(graphs.CudaGraphBackend(self.device))

    def _wrap_student_for_ddp(self):
        """Under torchrun: the student in DDP; modules trained beside it get their gradients
        averaged after each backward (:meth:`_average_extra_gradients`) and their BatchNorm
        statistics shared with the student's. Other state they update in a step (CRD's
        memory bank and normalisation constants) would drift apart in each process, so such
        methods are refused."""
        if not self.context.distributed:
            return
        from torch.nn.parallel import DistributedDataParallel

        _refuse_per_process_state(self.extra_modules, self.cfg.DISTILLER.TYPE)

        student = self.distiller.student
        if self.cfg.SLKD.SYNC_BN and self.device.type != "cuda":
            raise ConfigError("SLKD.SYNC_BN needs CUDA devices (torch's SyncBatchNorm does not run on CPUs); set it False")
        if self.cfg.SLKD.SYNC_BN:
            student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
            self.student = student
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # The student runs once per view before one backward: DDP's buffer broadcast at every
        # forward would rewrite BatchNorm statistics that autograd saved. Buffers are instead
        # made rank 0's before each evaluation and checkpoint (_share_buffers).
        self.distiller.student = DistributedDataParallel(student, device_ids=device_ids, **_no_buffer_sync_at_forward())

    def _leave_ddp(self):
        """Put the student back in the distiller in place of its DDP wrapper, so that DDP's
        reducer lets go of the process group while the group is still registered.

        A reducer that outlives ``destroy_process_group`` holds the group's last reference, and
        freeing it destroys the group with the GIL held: under torch 2.11 that joins a gloo
        thread still waiting for the GIL to release its last collective's tensors, and the
        process hangs as it ends (seen in two-process runs on a loaded CPU)."""
        if isinstance(self.distiller.student, torch.nn.parallel.DistributedDataParallel):
            self.distiller.student = self.distiller.student.module

    def _share_buffers(self):
        """Give every process rank 0's BatchNorm statistics, the student's and those of the
        modules trained beside it (under torchrun)."""
        if self.context.distributed:
            import torch.distributed as dist

            for module in (self.student, *self.extra_modules):
                for buffer in module.buffers():
                    dist.broadcast(buffer, src=0)

    def _average_extra_gradients(self):
        """Average over processes the gradients of the parameters trained beside the student
        (DDP averages the student's), in one collective. A process without a gradient for a
        parameter adds zeros; a parameter no process has a gradient for keeps none, so the
        optimizer skips it as it would in one process."""
        if not (self.context.distributed and self.extra_parameters):
            return
        import torch.distributed as dist

        parameters = self.extra_parameters
        here = [p.grad is not None for p in parameters]
        gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([gradient.reshape(-1).float() for gradient in gradients] + [torch.tensor(here, dtype=torch.float32, device=self.device)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        *summed, counts = flat.split([p.numel() for p in parameters] + [len(parameters)])
        # with every gradient here, each parameter has one somewhere: no need to read the counts
        # (a host read); methods that leave a parameter without a gradient pay for one
        anywhere = here if all(here) else (counts > 0).tolist()
        for parameter, gradient, total, used in zip(parameters, gradients, summed, anywhere):
            parameter.grad = gradient.copy_(total.view_as(gradient) / self.context.world_size) if used else None

    @property
    def run_folder(self):
        return self.record.folder

    # ----------------------------------------------------------------- loop
    def train(self, resume: bool = False):
        """Train from epoch 1, or from the epoch after the last complete one with ``resume``.

        However it ends, the TensorBoard writer is closed and the student leaves DDP
        (:meth:`_leave_ddp`): a trainer trains once."""
        try:
            start = 1
            if resume:
                start = self._resume()
            else:
                self._refuse_to_overwrite()
                if self.context.is_main:
                    self.record.start(self.cfg, self.argv, environment(self.host_package))
            epochs = int(self.cfg.SOLVER.EPOCHS)
            for epoch in range(start, epochs + 1):
                self.run_epoch(epoch)
            if start > epochs and self.context.is_main:  # resumed a finished run: refresh its summary
                done = self.record.read_metrics()
                if done:
                    self._write_summary(done[-1])
            return self.best_acc
        finally:
            self._close_writer()
            self._leave_ddp()

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch, evaluate when due, record and checkpoint; return the epoch's metrics.

        The order survives a kill at any point: the metrics line is appended first (a resume
        from the previous checkpoint drops it and trains the epoch again), the checkpoints
        follow with ``latest`` last (so ``best`` is never behind a ``latest`` that a resume
        would start from), and the summary, which ``slkd-bench`` reads to call a run finished,
        is written after them."""
        seed_everything(int(self.cfg.SLKD.SEED), epoch, rank=self.context.rank)
        lr = self._set_learning_rate(epoch)
        sampler = self.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        metrics = {"epoch": epoch, "lr": lr}
        metrics.update(self._train_epoch(epoch))
        metrics["train_seconds"] = time.perf_counter() - started
        metrics["images_per_second"] = metrics["train_images"] / max(metrics["train_seconds"], 1e-9)
        self._share_buffers()
        if epoch % int(self.cfg.SLKD.EVAL_FREQ) == 0 or epoch == int(self.cfg.SOLVER.EPOCHS):
            started = time.perf_counter()
            metrics.update(self.evaluate())
            metrics["eval_seconds"] = time.perf_counter() - started
        if self.device.type == "cuda":
            metrics["peak_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        improved = "test_acc" in metrics and metrics["test_acc"] > self.best_acc
        if improved:
            self.best_acc = metrics["test_acc"]
        metrics["best_acc"] = self.best_acc
        if self.context.is_main:
            self.record.log_epoch(metrics)
        self._save(epoch, improved)
        self._report(metrics)
        return metrics

    def _train_epoch(self, epoch: int) -> dict:
        self.distiller.train()
        names, rows, batch_sizes = None, None, []
        progress = _Progress(len(self.train_loader), f"epoch {epoch}", enabled=self.context.is_main)
        for step, batch in enumerate(self.train_loader):
            images, target, extras = self._to_device(batch)
            losses, loss, logits, stats = self._step(images, target, extras, epoch)
            if names is None:
                names = ["loss", *losses, *stats]
                rows = torch.zeros((len(self.train_loader), len(names) + TOP_K), device=self.device)
            # one row per step, written on the device (four kernels, no sync): the per-image
            # means of the loss terms and statistics, then the hits at ranks 1..TOP_K
            values = [loss, *losses.values(), *stats.values()]
            torch.stack([_scalar(value) for value in values], out=rows[step, : len(names)])
            _hits_by_rank(logits, target, out=rows[step, len(names) :])
            batch_sizes.append(target.shape[0])
            progress.update()
        progress.close()
        if rows is None:
            raise ConfigError(
                f"the training loader of epoch {epoch} yielded no batches: the training set is empty on "
                "this process (check the dataset, or use fewer torchrun processes)"
            )
        rows = rows[: len(batch_sizes)]
        weights = torch.tensor(batch_sizes, dtype=rows.dtype).to(self.device, non_blocking=True)
        hits = rows[:, len(names) :].sum(dim=0)
        finite = torch.isfinite(rows[:, 0])
        totals = torch.cat([
            weights @ rows[:, : len(names)],
            torch.stack([hits[0], hits.sum(), weights.sum(), (~finite).sum().to(rows.dtype)]),
        ])  # fmt: skip
        all_reduce_sum(totals, self.context)
        values = totals.tolist()
        if values[-1] > 0:
            self._raise_non_finite(epoch, rows, finite, losses)
        count = values[-2]
        result = {("train_loss" if name == "loss" else name): value / count for name, value in zip(names, values)}
        result["train_acc"] = 100.0 * values[len(names)] / count
        result["train_acc_top5"] = 100.0 * values[len(names) + 1] / count
        result["train_images"] = int(count)
        return result

    def _step(self, images, target, extras, epoch):
        """One training step: ``(losses, loss, logits, stats)``, all detached, on the device.

        With ``SLKD.CUDA_GRAPHS`` it is run, recorded or replayed by :attr:`step_graphs`.
        """
        if self.step_graphs is None:
            return self._eager_step(images, target, extras, epoch)
        key = (graphs.graph_key(self.distiller, epoch), tuple(group["lr"] for group in self.optimizer.param_groups))
        return self.step_graphs.run(key, (images, target, extras), lambda *batch: self._eager_step(*batch, epoch))

    def _eager_step(self, images, target, extras, epoch):
        recording = self.step_graphs is not None
        with self._autocast():
            if self.num_views == 2:
                logits, losses = self.distiller(image_weak=images[0], image_strong=images[1], target=target, epoch=epoch)
            else:
                logits, losses = self.distiller(image=images, target=target, epoch=epoch, **extras)
        # mdistiller's sum of means; a 0-d term is its own mean (no kernel spent on it)
        terms = [value.float() if value.dim() == 0 else value.float().mean() for value in losses.values()]
        loss = terms[0]
        for term in terms[1:]:
            loss = loss + term
        # under graphs the gradients stay the same tensors from step to step (zeroed, not freed)
        self.optimizer.zero_grad(set_to_none=not recording)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self._average_extra_gradients()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self._average_extra_gradients()
            self.optimizer.step()
        stats = {name: value.detach() for name, value in getattr(self.distiller, "step_stats", {}).items()}
        return {name: value.detach() for name, value in losses.items()}, loss.detach(), logits.detach(), stats

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test top-1, top-5 (percent) and cross-entropy of the student on the test set."""
        self.distiller.eval()
        sums = torch.zeros(4, device=self.device)
        for batch in self.val_loader:
            image, target = batch[0], batch[1]
            image = self._image_to_device(image)
            target = target.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.distiller(image=image)
            loss = F.cross_entropy(logits.float(), target, reduction="sum")
            sums += torch.cat([_correct(logits, target), torch.stack([loss, torch.ones_like(loss) * target.shape[0]])])
        all_reduce_sum(sums, self.context)
        top1, top5, loss, count = sums.tolist()
        count = max(count, 1.0)
        return {"test_acc": 100.0 * top1 / count, "test_acc_top5": 100.0 * top5 / count, "test_loss": loss / count}

    # ----------------------------------------------------------------- pieces
    def _autocast(self):
        """``SLKD.AMP``'s autocast, without its cache of cast weights. A CUDA graph cannot keep
        that cache, and it changes the arithmetic: with it, a weight used on both views is cast
        once and its two gradients are summed in half precision (where fp16 overflows sooner);
        without it, each use is cast and the gradients are summed in float32. Eager steps and
        recorded ones then compute the same, for two dozen more casts per SLD step (forward and
        backward; 91 instead of 67 counted on a CPU for resnet32x4 -> resnet8x4)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    def _to_device(self, batch):
        images, target = batch[0], batch[1]
        if self.num_views == 2:
            if not isinstance(images, (list, tuple)) or len(images) != 2:
                raise TypeError(
                    "the distiller needs two views per batch but the loader yields one image "
                    "tensor; its dataset transform should return (weak, strong)"
                )
            images = [self._image_to_device(view) for view in images]
        else:
            images = self._image_to_device(images)
        target = target.to(self.device, non_blocking=True)
        extras = {}
        if len(batch) > 2:
            extras["index"] = batch[2].to(self.device, non_blocking=True)
        if len(batch) > 3:
            extras["contrastive_index"] = batch[3].to(self.device, non_blocking=True)
        return images, target, extras

    def _image_to_device(self, image):
        image = image.to(self.device, non_blocking=True).float()
        if self.channels_last and image.dim() == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        return image

    def _set_learning_rate(self, epoch: int) -> float:
        """mdistiller's step schedule: ``LR * RATE ** (number of stages < epoch)``."""
        solver = self.cfg.SOLVER
        decays = sum(1 for stage in solver.LR_DECAY_STAGES if epoch > stage)
        lr = solver.LR * solver.LR_DECAY_RATE**decays
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _raise_non_finite(self, epoch, rows, finite, losses):
        bad = (~finite).nonzero()
        if len(bad):
            first = int(bad[0])
            terms = ", ".join(f"{name}={value:.4g}" for name, value in zip(losses, rows[first, 1 : 1 + len(losses)].tolist()))
            where = f"at iteration {first + 1} of {len(self.train_loader)} ({terms})"
        else:
            where = "in another process"
        raise NonFiniteLoss(
            f"non-finite loss in epoch {epoch} {where}; the run "
            f"stopped before saving this epoch, so {self.run_folder / 'latest'} still holds the "
            "last good epoch. Lower SOLVER.LR, check the inputs, or try SLKD.AMP none."
        )

    # ----------------------------------------------------------------- state
    def _state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model": _plain_state(self.distiller),
            "optimizer": self.optimizer.state_dict(),
            "best_acc": self.best_acc,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": checkpoint.rng_state(),
            "world_size": self.context.world_size,
            "config": self.cfg.dump(),
        }

    def _save(self, epoch: int, improved: bool) -> None:
        if not self.context.is_main:
            return
        folder = self.run_folder
        state = self._state(epoch)
        student = {"model": self.student.state_dict()}
        if epoch % int(self.cfg.LOG.SAVE_CHECKPOINT_FREQ) == 0:
            checkpoint.save_atomic(student, folder / f"student_{epoch}")
        if improved:
            checkpoint.save_atomic(state, folder / "best")
            checkpoint.save_atomic(student, folder / "student_best")
        checkpoint.save_atomic(student, folder / "student_latest")
        checkpoint.save_latest(state, folder, "latest")  # last: a resume starts from here

    def _refuse_to_overwrite(self) -> None:
        """ConfigError when a fresh start would write over an earlier run's checkpoints."""
        if checkpoint.has_resume_checkpoint(self.run_folder):
            raise ConfigError(
                f"{self.run_folder} holds the checkpoints of an earlier run: continue it with --resume, "
                "give this run another folder (LOG.PREFIX, EXPERIMENT.NAME or EXPERIMENT.TAG), or delete that folder"
            )

    def _resume(self) -> int:
        state, path = checkpoint.load_latest(self.run_folder)
        if "config" in state:
            changed = changed_settings(state["config"], self.cfg.dump(), RESUME_MAY_CHANGE)
            if changed:
                raise ConfigError(
                    f"--resume: the run in {self.run_folder} was trained with other settings: {'; '.join(changed)}. "
                    f"Resume it with the command that started it (in {self.run_folder / 'command.txt'}) plus --resume, "
                    "or train these settings in another folder (LOG.PREFIX, EXPERIMENT.NAME or EXPERIMENT.TAG)"
                )
        _load_plain_state(self.distiller, state["model"])
        optim.load_state(self.optimizer, state["optimizer"])  # this machine's SGD implementation, the run's state
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_acc = state["best_acc"]
        checkpoint.set_rng_state(state["rng"])
        self.record.truncate_after(state["epoch"])
        if self.context.is_main:
            print(f"[slkd] resuming from {path} after epoch {state['epoch']} (best {self.best_acc:.2f})", flush=True)
        return int(state["epoch"]) + 1

    # ----------------------------------------------------------------- logging
    def _close_writer(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _report(self, metrics: dict) -> None:
        """Summary, tensorboard (and wandb) scalars and the epoch's line, on rank 0."""
        if not self.context.is_main:
            return
        self._write_summary(metrics)
        self._write_scalars(metrics)

    def _write_summary(self, metrics: dict) -> None:
        self.record.write_summary(
            {
                "best_acc": self.best_acc,
                "last_acc": metrics.get("test_acc"),
                "epochs_done": metrics["epoch"],
                "epochs": int(self.cfg.SOLVER.EPOCHS),
                "seed": int(self.cfg.SLKD.SEED),
                "method": self.cfg.DISTILLER.TYPE,
                "teacher": self.cfg.DISTILLER.TEACHER,
                "student": self.cfg.DISTILLER.STUDENT,
                "world_size": self.context.world_size,
                "views": self.num_views,
            }
        )

    def _write_scalars(self, metrics: dict) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(self.run_folder / "train.events"))
        epoch = metrics["epoch"]
        for name, value in metrics.items():
            if name != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(name, value, epoch)
        self.writer.flush()
        if self.cfg.LOG.WANDB:
            try:
                import wandb
            except ImportError:
                wandb = None
            if wandb is not None and wandb.run is not None:
                wandb.log(metrics, step=epoch)
        shown = ", ".join(
            f"{name} {metrics[name]:.4g}"
            for name in ("train_loss", "train_acc", "test_acc", "best_acc", "train_seconds")
            if name in metrics
        )
        print(f"[slkd] epoch {epoch}/{self.cfg.SOLVER.EPOCHS}: {shown}", flush=True)


class _Progress:
    """A tqdm bar on a terminal, a line every tenth of the epoch otherwise. Reads nothing from the device."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.enabled, self.done = total, label, enabled, 0
        self.started = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, dynamic_ncols=True)

    def update(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.enabled and self.total >= 10 and self.done % (self.total // 10) == 0:
            elapsed = time.perf_counter() - self.started
            rate = self.done / max(elapsed, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            print(f"[slkd] {self.label}: {self.done}/{self.total} iterations, {rate:.1f} it/s, ETA {eta:.0f} s", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _correct(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(2,)`` counts of rows whose label is the top-1 and among the top-5 predictions."""
    hits = torch.zeros(TOP_K, device=logits.device)
    _hits_by_rank(logits, target, out=hits)
    return torch.stack([hits[0], hits.sum()])


def _hits_by_rank(logits: torch.Tensor, target: torch.Tensor, out: torch.Tensor) -> None:
    """Write into ``out`` (``(TOP_K,)`` float) how many rows have their label at rank 1, 2, ...
    of ``logits`` (zeros past the number of classes)."""
    k = min(TOP_K, logits.shape[1])
    hits = logits.topk(k, dim=1).indices == target.view(-1, 1)
    torch.sum(hits, dim=0, dtype=out.dtype, out=out[:k])


def _scalar(value: torch.Tensor) -> torch.Tensor:
    """A loss term or statistic as a 0-d float32 tensor (a mean where a host returns a vector)."""
    value = value.detach()
    return (value.mean() if value.dim() else value).float()


def configure_backends(cfg, device_type: str) -> None:
    """``SLKD.DETERMINISTIC``: deterministic kernels (cuBLAS workspace, cuDNN without
    autotuning); otherwise cuDNN autotunes on CUDA."""
    if cfg.SLKD.DETERMINISTIC:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device_type == "cuda":
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed python, numpy and torch from (seed, epoch, rank), so an epoch replays after a
    resume (epoch 0: the set-up before training, e.g. the networks' initial weights, the same
    in every process). ``rank`` gives each torchrun process its own streams (dropout); the
    data's draws do not come from here but from each item's key (:class:`slkd.host.data.SeededItems`)."""
    mixed = (seed * 1_000_003 + epoch + rank * 2**20) % 2**32
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)


def _check_fused_loss_device(distiller, device) -> None:
    """ConfigError unless the distiller's fused SLD loss (``SLKD.FUSED_LOSS``) can run on
    ``device``; distillers without one ignore the option."""
    if not getattr(getattr(distiller, "criterion", None), "fused", False):
        return
    from slkd.losses.sld_fused import runs_on

    if not runs_on(device):
        raise ConfigError(
            f"SLKD.FUSED_LOSS runs on CUDA devices, this run is on {device.type}: set SLKD.FUSED_LOSS "
            "False (or drop --fused-loss)"
        )


def _no_buffer_sync_at_forward() -> dict:
    """DDP's keyword that stops it broadcasting buffers at every forward: ``forward_sync_buffers``
    where torch has it (it deprecates ``broadcast_buffers``; buffers are still made rank 0's
    once, when DDP wraps the student), ``broadcast_buffers`` before."""
    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _refuse_per_process_state(modules, method: str) -> None:
    """ConfigError when ``modules`` (beside the student and teacher) hold state other than
    BatchNorm statistics, i.e. persistent buffers (non-persistent ones, such as SLDLoss's
    temperatures, are constants): state a step may update in each process, which torchrun
    would let drift."""
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


def _unwrap_data_parallel(distiller):
    if isinstance(distiller, torch.nn.DataParallel):
        if len(distiller.device_ids or []) > 1:
            print(
                "[slkd] unwrapping nn.DataParallel: slkd's trainer uses one device per process; "
                "for several GPUs launch with torchrun (see the README)",
                flush=True,
            )
        return distiller.module
    return distiller


def _device_of(module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _plain_state(distiller) -> dict:
    """``distiller.state_dict()`` without DDP's ``module.`` in the student's keys, so that a
    checkpoint loads in any number of processes."""
    wrapped = isinstance(distiller.student, torch.nn.parallel.DistributedDataParallel)
    prefix = "student.module."
    return {
        ("student." + key[len(prefix):] if wrapped and key.startswith(prefix) else key): value
        for key, value in distiller.state_dict().items()
    }


def _load_plain_state(distiller, state: dict) -> None:
    student = distiller.student
    if isinstance(student, torch.nn.parallel.DistributedDataParallel):
        state = {("student.module." + key[len("student."):] if key.startswith("student.") else key): value for key, value in state.items()}
    distiller.load_state_dict(state)
