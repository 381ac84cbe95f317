"""slkd's trainer: two views or one, any device, AMP, torchrun, crash-safe checkpoints.

Registered in mdistiller's ``trainer_dict`` as ``"slkd"`` and built with mdistiller's
arguments ``(experiment_name, distiller, train_loader, val_loader, cfg)``, so the host's
``tools/train.py`` can run it. From the host's loaders it keeps only the datasets: it sets
their transform to one or two views (what the distiller's ``num_views`` asks for) and feeds
them with its own loaders (:mod:`slkd.host.data`); with ``SLKD.DEVICE_VIEWS`` the loader
yields each batch's draws and CIFAR-100's two views are made on the device
(:mod:`slkd.host.device_views`).

The trainer holds the epoch loop; its pieces live beside it: the process's kernel settings,
seeds and precision in :mod:`slkd.host.runtime`, DistributedDataParallel in
:mod:`slkd.host.ddp`, the epoch's on-device numbers in :mod:`slkd.host.metrics`, CUDA graphs
in :mod:`slkd.host.graphs`. Its public methods (:meth:`SLKDTrainer.to_device`,
:meth:`~SLKDTrainer.step`, :meth:`~SLKDTrainer.train_epoch`, :meth:`~SLKDTrainer.evaluate`,
:meth:`~SLKDTrainer.save_checkpoints`) are what the benchmarks time.

A training step makes no host-device synchronisation (checked on GPUs with fp32 and bf16;
fp16, whose gradient scaler the fused SGD lets decide on the device whether to step, is not
checked on a GPU yet): each step writes its loss terms and hit counts into a row of an
on-device table (:class:`slkd.host.metrics.EpochMetrics`), and the epoch's sums, accuracies
and first non-finite step are read from it once, at the end of the epoch. A non-finite loss
stops the run there, before the epoch's checkpoint, naming the epoch, iteration and loss
terms. With ``SLKD.CUDA_GRAPHS`` steps are recorded and replayed as CUDA graphs
(:mod:`slkd.host.graphs`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F

from slkd.host import data, ddp, device_views, fast, graphs, metrics, optim, runtime
from slkd.errors import CheckpointError, ConfigError, NonFiniteLoss
from slkd.host.config import validate_run_options
from slkd.utils import checkpoint
from slkd.utils.distributed import DistContext, all_reduce_sum
from slkd.utils.records import RunRecord, environment
from slkd.utils.settings import EXECUTION_KEYS, changed_settings

#: Config keys (and nodes) a resumed run may change: how it is executed, not what it trains,
#: and SOLVER.EPOCHS, to train a run further. Any other change is refused by ``--resume``.
RESUME_MAY_CHANGE = ("SOLVER.EPOCHS", *EXECUTION_KEYS)



def _data_words(source: str) -> str:
    """``"real"`` or ``"synthetic N"`` (:func:`slkd.host.data.data_source`) in words."""
    return "the real dataset" if source == "real" else f"{source.split()[-1]} synthetic images"


def _data_flag(source: str) -> str:
    """The slkd-train flag that gives ``source``."""
    return "without --synthetic" if source == "real" else f"--synthetic {source.split()[-1]}"


class StepResult(NamedTuple):
    """What :meth:`SLKDTrainer.step` returns, detached and on the device (no host read)."""

    losses: dict  # the distiller's loss terms, by name (a vector where the host returns one)
    loss: torch.Tensor  # 0-d float32: the sum of the terms' means, which was back-propagated
    logits: torch.Tensor  # the student's logits for the first view, ``(batch, classes)``
    stats: dict  # the distiller's ``step_stats`` (SLD: swap rates), by name


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
        smoke: the run is ``slkd-train --smoke`` (recorded in ``summary.json``).
    """

    def __init__(self, experiment_name, distiller, train_loader, val_loader, cfg, *, context=None, argv=None, host_package=None, smoke=False):
        validate_run_options(cfg)
        self.cfg = cfg
        host_package = host_package or sys.modules.get("mdistiller")  # mdistiller's tools/train.py passes none
        distiller = runtime.unwrap_data_parallel(distiller)
        self.context = context or DistContext(device=runtime.device_of(distiller))
        self.device = self.context.device
        runtime.configure_backends(cfg, self.device.type)  # also under mdistiller's tools/train.py
        fast.check(cfg, self.device.type)  # before the checks of the settings it stands for
        runtime.check_fused_loss_device(distiller, self.device)
        self.num_views = int(getattr(distiller, "num_views", 1))
        self.channels_last = bool(cfg.SLKD.CHANNELS_LAST)
        self.distiller = distiller.to(self.device)
        if self.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        # trained beside the student (FitNet's regressor, CRD's embeddings, ...): outside DDP
        self.extra_modules = [module for name, module in self.distiller.named_children() if name not in ("student", "teacher")]
        self.student = ddp.wrap_student(self.distiller, cfg, self.context, self.extra_modules)  # the module, never its wrapper

        self.data_source = data.data_source(train_loader.dataset)
        self.smoke = bool(smoke)
        data.use_views(train_loader.dataset, cfg.DATASET.TYPE, self.num_views)
        ranks = {"world_size": self.context.world_size, "rank": self.context.rank, "device": self.device}
        self.device_views = None  # SLKD.DEVICE_VIEWS: the loader yields draws, the views are made on the device
        if cfg.SLKD.DEVICE_VIEWS:
            self.device_views, self.train_loader = device_views.training_feed(train_loader.dataset, cfg, self.num_views, **ranks)
        else:
            self.train_loader = data.train_loader(train_loader.dataset, cfg, **ranks)
        self.val_loader = data.test_loader(val_loader.dataset, cfg, **ranks)

        # fused on a GPU: one kernel per update, and fp16's scaler never reads its inf flag on the host
        learnable = list(self.distiller.get_learnable_parameters())
        self.optimizer = optim.sgd(learnable, cfg.SOLVER, fused=self.device.type == "cuda")
        student_parameters = {id(parameter) for parameter in self.student.parameters()}
        # the parameters of the modules beside the student: their gradients are averaged by hand
        self.extra_parameters = [parameter for parameter in learnable if id(parameter) not in student_parameters]
        self.step_graphs = graphs.step_graphs_for(cfg, self.context)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.SLKD.AMP == "fp16" else None
        self.best_acc = -1.0
        self.record = RunRecord(os.path.join(cfg.LOG.PREFIX, experiment_name), enabled=self.context.is_main)
        self.argv = list(argv if argv is not None else sys.argv)
        self.host_package = host_package
        self.writer = None

    @property
    def run_folder(self):
        return self.record.folder

    # ----------------------------------------------------------------- loop
    def train(self, resume: bool = False):
        """Train from epoch 1, or from the epoch after the last complete one with ``resume``.

        However it ends, the TensorBoard writer is closed and the student leaves DDP
        (:func:`slkd.host.ddp.unwrap_student`): a trainer trains once."""
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
        except BaseException as error:
            ddp.release_frames(error)  # its frames would keep DDP's wrapper past the unwrap below
            raise
        finally:
            self._close_writer()
            ddp.unwrap_student(self.distiller)

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch, evaluate when due, record and checkpoint; return the epoch's metrics.

        The order survives a kill at any point: the metrics line is appended first (a resume
        from the previous checkpoint drops it and trains the epoch again), the checkpoints
        follow with ``latest`` last (so ``best`` is never behind a ``latest`` that a resume
        would start from), and the summary, which ``slkd-bench`` reads to call a run finished,
        is written after them."""
        runtime.seed_everything(int(self.cfg.SLKD.SEED), epoch, rank=self.context.rank)
        lr = self._set_learning_rate(epoch)
        sampler = self.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        result = {"epoch": epoch, "lr": lr}
        result.update(self.train_epoch(epoch))
        result["train_seconds"] = time.perf_counter() - started
        result["images_per_second"] = result["train_images"] / max(result["train_seconds"], 1e-9)
        ddp.share_buffers([self.student, *self.extra_modules], self.context)
        if epoch % int(self.cfg.SLKD.EVAL_FREQ) == 0 or epoch == int(self.cfg.SOLVER.EPOCHS):
            started = time.perf_counter()
            result.update(self.evaluate())
            result["eval_seconds"] = time.perf_counter() - started
        if self.device.type == "cuda":
            result["peak_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        improved = "test_acc" in result and result["test_acc"] > self.best_acc
        if improved:
            self.best_acc = result["test_acc"]
        result["best_acc"] = self.best_acc
        if self.context.is_main:
            self.record.log_epoch(result)
        self.save_checkpoints(epoch, improved)
        self._report(result)
        return result

    def train_epoch(self, epoch: int) -> dict:
        """Train one pass over the training loader at the learning rate set; return its per-image
        means over all processes: ``train_loss``, each loss term and statistic by name,
        ``train_acc``, ``train_acc_top5`` (percent) and ``train_images``. The numbers are read
        from the device once, at the end; a non-finite loss raises :class:`NonFiniteLoss` there."""
        self.distiller.train()
        table = None
        progress = _Progress(len(self.train_loader), f"epoch {epoch}", enabled=self.context.is_main)
        for batch in self.train_loader:
            images, target, extras = self.to_device(batch)
            result = self.step(images, target, extras, epoch)
            if table is None:
                table = metrics.EpochMetrics(len(self.train_loader), result.losses, result.stats, self.device)
            table.record(result.loss, result.losses, result.stats, result.logits, target)
            progress.update()
        progress.close()
        if table is None:
            raise ConfigError(
                f"the training loader of epoch {epoch} yielded no batches: the training set is empty on "
                "this process (check the dataset, or use fewer torchrun processes)"
            )
        sums = table.reduce(self.context)
        if sums[metrics.NON_FINITE_STEPS] > 0:
            self._raise_non_finite(epoch, table.first_non_finite())
        images = sums[metrics.IMAGES]
        means = {name: sums[name] / images for name in table.scalars}
        means["train_acc"] = 100.0 * sums[metrics.TOP1_HITS] / images
        means["train_acc_top5"] = 100.0 * sums[metrics.TOPK_HITS] / images
        means["train_images"] = int(images)
        return means

    def to_device(self, batch):
        """``(images, target, extras)`` of a training loader's batch, on the trainer's device
        as :meth:`step` takes them: float images (a list of two views for a two-view distiller),
        channels-last with ``SLKD.CHANNELS_LAST``; ``extras`` holds the dataset's ``index``
        (and CRD's ``contrastive_index``) when the batch has them. Under ``SLKD.DEVICE_VIEWS``
        the batch holds the views' draws, and the views are made here, on the device."""
        images, target = batch[0], batch[1]
        if self.device_views is not None:
            images = [self._image_to_device(view) for view in self.device_views.make(images)]
        elif self.num_views == 2:
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

    def step(self, images, target, extras, epoch: int) -> StepResult:
        """One training step on a batch from :meth:`to_device`: forward, loss, backward and
        optimizer update, with no host-device synchronisation.

        With ``SLKD.CUDA_GRAPHS`` it is run, recorded or replayed by :attr:`step_graphs`,
        under :meth:`graph_key`.
        """
        if self.step_graphs is None:
            return self._eager_step(images, target, extras, epoch)
        return self.step_graphs.run(self.graph_key(epoch), (images, target, extras), lambda *batch: self._eager_step(*batch, epoch))

    def graph_key(self, epoch: int):
        """What a recorded step of ``epoch`` depends on besides its batch's shapes: the
        distiller's :func:`slkd.host.graphs.graph_key` and the learning rates, which a graph
        replays as it recorded them."""
        return graphs.graph_key(self.distiller, epoch), tuple(group["lr"] for group in self.optimizer.param_groups)

    def _eager_step(self, images, target, extras, epoch):
        recording = self.step_graphs is not None
        with runtime.autocast(self.device.type, self.cfg.SLKD.AMP):
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
            ddp.average_gradients(self.extra_parameters, self.context)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            ddp.average_gradients(self.extra_parameters, self.context)
            self.optimizer.step()
        stats = {name: value.detach() for name, value in getattr(self.distiller, "step_stats", {}).items()}
        return StepResult({name: value.detach() for name, value in losses.items()}, loss.detach(), logits.detach(), stats)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test top-1, top-5 (percent) and cross-entropy of the student on the test set."""
        self.distiller.eval()
        sums = torch.zeros(4, device=self.device)
        for batch in self.val_loader:
            image, target = batch[0], batch[1]
            image = self._image_to_device(image)
            target = target.to(self.device, non_blocking=True)
            with runtime.autocast(self.device.type, self.cfg.SLKD.AMP):
                logits = self.distiller(image=image)
            loss = F.cross_entropy(logits.float(), target, reduction="sum")
            sums += torch.cat([metrics.top1_topk_hits(logits, target), torch.stack([loss, torch.ones_like(loss) * target.shape[0]])])
        all_reduce_sum(sums, self.context)
        top1, top5, loss, count = sums.tolist()
        count = max(count, 1.0)
        return {"test_acc": 100.0 * top1 / count, "test_acc_top5": 100.0 * top5 / count, "test_loss": loss / count}

    # ----------------------------------------------------------------- pieces
    def _set_learning_rate(self, epoch: int) -> float:
        """mdistiller's step schedule: ``LR * RATE ** (number of stages < epoch)``."""
        solver = self.cfg.SOLVER
        decays = sum(1 for stage in solver.LR_DECAY_STAGES if epoch > stage)
        lr = solver.LR * solver.LR_DECAY_RATE**decays
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _raise_non_finite(self, epoch, first):
        """NonFiniteLoss naming the epoch and, from this process's ``first`` non-finite step
        (:meth:`slkd.host.metrics.EpochMetrics.first_non_finite`), its iteration and loss terms."""
        if first is not None:
            step, losses = first
            terms = ", ".join(f"{name}={value:.4g}" for name, value in losses.items())
            where = f"at iteration {step + 1} of {len(self.train_loader)} ({terms})"
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
            "model": ddp.plain_state_dict(self.distiller),
            "optimizer": self.optimizer.state_dict(),
            "best_acc": self.best_acc,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": checkpoint.rng_state(),
            "world_size": self.context.world_size,
            "config": self.cfg.dump(),
            "data": self.data_source,
        }

    def save_checkpoints(self, epoch: int, improved: bool) -> None:
        """Write the checkpoints of ``epoch`` (rank 0 only), each atomically: ``student_<epoch>``
        every ``LOG.SAVE_CHECKPOINT_FREQ`` epochs, ``best`` and ``student_best`` when the epoch
        ``improved`` the best test accuracy, ``student_latest``, and ``latest`` last, so that a
        resume never starts from an epoch whose other checkpoints are not written."""
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
        missing = [key for key in ("config", "model", "optimizer", "epoch", "best_acc", "rng") if key not in state]
        if missing:
            raise CheckpointError(
                f"--resume: {path} was not written by slkd-train (it has no {', '.join(repr(key) for key in missing)} "
                f"entry): resume only continues a run slkd-train started; to train in {self.run_folder} from scratch, "
                "move that file away and start without --resume"
            )
        saved_data = state.get("data")
        if saved_data is not None and saved_data != self.data_source:
            raise ConfigError(
                f"--resume: the run in {self.run_folder} trained on {_data_words(saved_data)}, this command gives "
                f"{_data_words(self.data_source)}: resume with the same data ({_data_flag(saved_data)}, as in "
                f"{self.run_folder / 'command.txt'}), or train this data in another folder (LOG.PREFIX, EXPERIMENT.NAME or EXPERIMENT.TAG)"
            )
        changed = changed_settings(state["config"], self.cfg.dump(), RESUME_MAY_CHANGE)
        if changed:
            raise ConfigError(
                f"--resume: the run in {self.run_folder} was trained with other settings: {'; '.join(changed)}. "
                f"Resume it with the command that started it (in {self.run_folder / 'command.txt'}) plus --resume, "
                "or train these settings in another folder (LOG.PREFIX, EXPERIMENT.NAME or EXPERIMENT.TAG)"
            )
        ddp.load_plain_state_dict(self.distiller, state["model"])
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

    def _report(self, result: dict) -> None:
        """Summary, tensorboard (and wandb) scalars and the epoch's line, on rank 0."""
        if not self.context.is_main:
            return
        self._write_summary(result)
        self._write_scalars(result)

    def _write_summary(self, result: dict) -> None:
        self.record.write_summary(
            {
                "best_acc": self.best_acc,
                "last_acc": result.get("test_acc"),
                "epochs_done": result["epoch"],
                "epochs": int(self.cfg.SOLVER.EPOCHS),
                "seed": int(self.cfg.SLKD.SEED),
                "method": self.cfg.DISTILLER.TYPE,
                "teacher": self.cfg.DISTILLER.TEACHER,
                "student": self.cfg.DISTILLER.STUDENT,
                "world_size": self.context.world_size,
                "views": self.num_views,
                "data": self.data_source,  # "real" or "synthetic N"
                "smoke": self.smoke,
                "device": self.device.type,
            }
        )

    def _write_scalars(self, result: dict) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(self.run_folder / "train.events"))
        epoch = result["epoch"]
        for name, value in result.items():
            if name != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(name, value, epoch)
        self.writer.flush()
        if self.cfg.LOG.WANDB:
            try:
                import wandb
            except ImportError:
                wandb = None
            if wandb is not None and wandb.run is not None:
                wandb.log(result, step=epoch)
        shown = ", ".join(
            f"{name} {result[name]:.4g}"
            for name in ("train_loss", "train_acc", "test_acc", "best_acc", "train_seconds")
            if name in result
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
