"""The host side of the benchmark: mdistiller, slkd's trainers built as slkd-train builds
them, the CE-only and released-style distillers, and the released SLD class."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import CE_WEIGHT, FULL_RUN, GAMMA, KD_WEIGHT, LR, MODE_OPTIONS, Settings, git_state
from .loss import literal_view_loss

BASE_CONFIG = "cifar100/sld/res32x4_res8x4.yaml"
"""The shipped config the step and estimate sections start from (their settings override it)."""


def import_host_or_reason(no_host: bool):
    """(host, info, None) or (None, None, reason)."""
    if no_host:
        return None, None, "mdistiller treated as missing (--no-host)"
    from slkd.host.registry import HostNotFound, import_host

    try:
        host = import_host()
    except HostNotFound as error:
        first = str(error).splitlines()[0]
        return None, None, f"mdistiller is not importable (set SLKD_MDISTILLER_PATH to a checkout): {first}"
    import slkd

    slkd.register()
    folder = Path(host.package.__file__).resolve().parent
    info = {"path": str(folder.parent), "flavour": host.flavour, "git": git_state(folder)}
    return host, info, None


@contextlib.contextmanager
def placeholder_modules(wanted: dict):
    """Stand-ins for modules (or names in them) that fail to import, restored afterwards.

    The released SLD.py imports ``termios.CEOL`` and ``turtle.st`` and uses neither; turtle
    needs Tk, which GPU machines often lack.
    """
    saved = {}
    for name, attributes in wanted.items():
        try:
            module = importlib.import_module(name)
            if all(hasattr(module, attribute) for attribute in attributes):
                continue
        except Exception:
            pass
        saved[name] = sys.modules.get(name)
        stub = types.ModuleType(name)
        for attribute in attributes:
            setattr(stub, attribute, None)
        sys.modules[name] = stub
    try:
        yield sorted(saved)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def load_released_sld(checkout: str, host):
    """The released ``mdistiller/distillers/SLD.py`` as module ``_slkd_released.SLD``.

    Its ``from ._base import Distiller`` resolves to the host's ``mdistiller.distillers._base``
    (so the class is a host Distiller, teacher kept in eval mode); ``from .loss import ...``
    to the host's ``mdistiller.distillers.loss`` when it has one, else the checkout's own
    ``loss.py`` (upstream mdistiller has none). The installed host is not modified.
    Returns (module, notes).
    """
    folder = Path(checkout) / "mdistiller" / "distillers"
    source = folder / "SLD.py"
    if not source.is_file():
        raise FileNotFoundError(f"SLKD_RELEASED_SLD_PATH={checkout}: {source} does not exist")
    package_name = "_slkd_released"
    package = types.ModuleType(package_name)
    package.__path__ = [str(folder)]
    package.__package__ = package_name
    sys.modules[package_name] = package
    sys.modules[package_name + "._base"] = importlib.import_module("mdistiller.distillers._base")
    notes = ["._base from the host"]
    try:
        sys.modules[package_name + ".loss"] = importlib.import_module("mdistiller.distillers.loss")
        notes.append(".loss from the host")
    except ModuleNotFoundError:
        notes.append(".loss from the released checkout (the host has none)")
    with placeholder_modules({"termios": ["CEOL"], "turtle": ["st"]}) as stubbed:
        spec = importlib.util.spec_from_file_location(package_name + ".SLD", source)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    if stubbed:
        notes.append("placeholder modules for " + ", ".join(stubbed))
    return module, notes


class Bench:
    """Builds slkd trainers, the CE-only and released-style distillers, and their steps."""

    def __init__(self, settings: Settings, host, shared: dict):
        self.settings = settings
        self.host = host
        self.shared = shared
        self.device = settings.device
        self.count = 0
        from slkd.run import train as run_train

        self.run_train = run_train
        self._distiller_classes()

    # -- configs, models
    def cfg(self, precision="fp32", workers=0, mode="eager"):
        """slkd-train's config for ``precision`` in ``mode`` (:data:`MODE_OPTIONS`); ``fast``
        is slkd-train's ``--fast``, which sets its own precision (bf16, channels-last)."""
        argv = ["--cfg", BASE_CONFIG, "--device", self.device.type]
        if mode == "fast":
            argv.append("--fast")
        else:
            argv += ["--amp", {"fp32": "none", "bf16": "bf16", "bf16-cl": "bf16", "fp16": "fp16"}[precision]]
            if precision.endswith("-cl"):
                argv.append("--channels-last")
        s = self.settings
        argv += [
            "DISTILLER.TYPE", "SLD",
            "DISTILLER.TEACHER", s.teacher,
            "DISTILLER.STUDENT", s.student,
            "DATASET.TYPE", "cifar100",
            "DATASET.TEST.BATCH_SIZE", str(FULL_RUN["batch"]),
            "SOLVER.TRAINER", "slkd",
            "SOLVER.BATCH_SIZE", str(s.batch),
            "SOLVER.LR", str(LR),
            "SLD.GAMMA", str(GAMMA),
            "SLKD.LOADER.WORKERS", str(workers),
            "LOG.PREFIX", s.workdir,
            *MODE_OPTIONS[mode],
        ]  # fmt: skip
        args = self.run_train.parse_args(argv)
        return self.run_train.build_config(args, self.host.cfg)

    def models(self, cfg):
        from slkd.host import models

        torch.manual_seed(0)
        models.check_names(self.host, cfg)
        student = models.build_student(self.host, cfg, 100)
        teacher = models.build_teacher(self.host, cfg, 100, pretrained=False)
        teacher.requires_grad_(False)
        calibrate_batchnorm(teacher, self.images(cpu=True)[0][0])
        return student, teacher

    def images(self, cpu=False):
        """Synthetic normalised two-view batch and labels (fixed seed)."""
        generator = torch.Generator().manual_seed(1)
        b = self.settings.batch
        weak = torch.randn(b, 3, 32, 32, generator=generator)
        strong = torch.randn(b, 3, 32, 32, generator=generator)
        target = torch.randint(0, 100, (b,), generator=generator)
        index = torch.arange(b)
        if cpu:
            return [weak, strong], target, index
        return [weak.to(self.device), strong.to(self.device)], target.to(self.device), index.to(self.device)

    def _distiller_classes(self):
        from slkd.host.distillers import teacher_logits

        base = self.host.distiller_base

        class CEOnlyTwoView(base):
            """SLD's two-view step without the distillation loss: the student on each view, the
            teacher on both views in SLD's one pass without gradient, SLD's one cross-entropy
            over both views' rows, nothing else."""

            num_views = 2

            def __init__(self, student, teacher, ce_weight):
                super().__init__(student, teacher)
                self.ce_weight = ce_weight

            def forward_train(self, image_weak=None, image_strong=None, target=None, **kwargs):
                views = [image_weak, image_strong]
                student = [self.student(view)[0] for view in views]
                teacher_logits(self.teacher, views)
                loss_ce = self.ce_weight * len(views) * F.cross_entropy(torch.cat(student), target.repeat(len(views)))
                return student[0], {"loss_ce": loss_ce}

        class ReleasedStyleSLD(base):
            """The released SLD's forward written from docs/method.md sections 1-3: clone-and-index swaps
            of both networks' logits on both views, then per view and per temperature a
            KD_WEIGHT-weighted term with its own softmaxes and KL (the literal loss above)."""

            num_views = 2

            def __init__(self, student, teacher):
                super().__init__(student, teacher)

            def forward_train(self, image_weak=None, image_strong=None, target=None, **kwargs):
                epoch = kwargs["epoch"]
                zw, zs = self.student(image_weak)[0], self.student(image_strong)[0]
                with torch.no_grad():
                    tw, ts = self.teacher(image_weak)[0], self.teacher(image_strong)[0]
                loss_ce = CE_WEIGHT * (F.cross_entropy(zw, target) + F.cross_entropy(zs, target))
                loss_kd = literal_view_loss(zw, tw, target, epoch, KD_WEIGHT) + literal_view_loss(zs, ts, target, epoch, KD_WEIGHT)
                return zw, {"loss_ce": loss_ce, "loss_kd": loss_kd}

        self.CEOnlyTwoView = CEOnlyTwoView
        self.ReleasedStyleSLD = ReleasedStyleSLD

    # -- slkd trainers
    def trainer(self, kind="SLD", precision="fp32", train_set=None, test_set=None, workers=0, mode="eager"):
        from slkd.host import data
        from slkd.host.trainer import SLKDTrainer
        from slkd.utils.distributed import DistContext

        cfg = self.cfg(precision, workers, mode)
        student, teacher = self.models(cfg)
        if kind == "SLD":
            distiller = self.host.distiller_dict["SLD"](student, teacher, cfg)
        elif kind == "CE":
            distiller = self.CEOnlyTwoView(student, teacher, float(cfg.SLD.CE_WEIGHT))
        else:
            raise ValueError(kind)
        if train_set is None:
            train_set = data.SyntheticCIFAR100(self.settings.batch, seed=0)
        if test_set is None:
            test_set = data.SyntheticCIFAR100(self.settings.batch, seed=1, with_index=False)
        self.count += 1
        return SLKDTrainer(
            f"bench-{self.count}-{kind}-{precision}-{mode}",
            distiller.to(self.device),
            _DatasetOnly(train_set),
            _DatasetOnly(test_set),
            cfg,
            context=DistContext(device=self.device),
            argv=["sld_speed"],
            host_package=self.host.package,
        )

    def trainer_step(self, trainer, epoch):
        """A closure running ``trainer.step`` on a device-resident batch prepared as the
        trainer's ``to_device`` prepares a loader batch (channels_last included). Under
        ``SLKD.DEVICE_VIEWS`` (``--fast``) each step makes its views on the device first, from
        one batch of draws made up front as the loader's workers make them."""
        if trainer.device_views is not None:
            draws = next(iter(trainer.train_loader))

            def step():
                trainer.step(*trainer.to_device(draws), epoch)
        else:
            images, target, extras = trainer.to_device(self.images(cpu=True))

            def step():
                trainer.step(images, target, extras, epoch)

        # with CUDA graphs, the eager steps and the recording come before the first replay
        step.steps_before_replay = trainer.step_graphs.warmup_steps + 1 if trainer.step_graphs else 0
        return step

    # -- released-style steps
    def released_step(self, distiller, fixed_epoch=None):
        """One iteration of the MLKD fork's AugTrainer.train_iter: zero_grad, forward through
        nn.DataParallel (CUDA), sum of means, backward, SGD step, top-1/5 accuracy, meters fed
        with ``loss.cpu().detach().numpy()`` and the progress message formatted (which reads
        the accuracy meters: a second host synchronisation). tqdm itself is left out."""
        from mdistiller.engine.utils import AverageMeter, accuracy

        distiller = distiller.to(self.device)
        distiller.train()
        model = nn.DataParallel(distiller, device_ids=[self.device.index or 0]) if self.settings.cuda else distiller
        optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
        (weak, strong), target, _index = self.images()
        meters = {name: AverageMeter() for name in ("losses", "top1", "top5")}

        def step(epoch=fixed_epoch):
            optimizer.zero_grad()
            preds, losses = model(image_weak=weak.float(), image_strong=strong.float(), target=target, epoch=epoch)
            loss = sum([value.mean() for value in losses.values()])
            loss.backward()
            optimizer.step()
            batch = weak.size(0)
            acc1, acc5 = accuracy(preds, target, topk=(1, 5))
            meters["losses"].update(loss.cpu().detach().numpy().mean(), batch)
            meters["top1"].update(acc1[0], batch)
            meters["top5"].update(acc5[0], batch)
            return "Loss:{:.4f}| Top-1:{:.3f}| Top-5:{:.3f}".format(meters["losses"].avg, meters["top1"].avg, meters["top5"].avg)

        return step

    def released_distiller(self, real: bool):
        cfg = self.cfg("fp32")
        student, teacher = self.models(cfg)
        if real:
            released_cfg = self.host.cfg.clone()
            released_cfg.defrost()
            released_cfg.KD.LOSS.CE_WEIGHT = CE_WEIGHT
            released_cfg.KD.LOSS.KD_WEIGHT = KD_WEIGHT
            return self.shared["released_module"].SLD(student, teacher, released_cfg)
        return self.ReleasedStyleSLD(student, teacher)


class _DatasetOnly:
    """What slkd's trainer reads of a host loader: its dataset (as slkd.run.train passes it)."""

    def __init__(self, dataset):
        self.dataset = dataset


def calibrate_batchnorm(model, images):
    """Give a random network BatchNorm statistics of one batch (its eval-mode logits then stay
    in a trained network's range); the timing does not depend on it."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()
