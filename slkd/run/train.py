"""slkd-train: mdistiller's training command, with SLD registered and slkd's trainer.

    slkd-train --cfg FILE [--resume] [--device cpu|cuda] [--smoke | --synthetic N] [--seed N]
               [--deterministic] [--amp none|bf16|fp16] [--channels-last] [--fast] [--wandb] [KEY VALUE ...]

The grammar is that of mdistiller's ``tools/train.py`` (``--cfg``, ``--resume``, trailing
``KEY VALUE`` overrides), so its configs and habits carry over; no patch and no
``tools/train.py`` are needed. Under ``torchrun`` it trains with DistributedDataParallel
(``python -m slkd.run.train`` works too). Every method (KD, DKD, CRD, MLKD, SLD, ...) runs
through slkd's trainer, so all see the same loop: a config's host trainer that only feeds the
batches differently (``base``, ``crd``, ``ours``) is replaced by it; one that changes the
method (DOT's ``dot`` and ``crd_dot``, with their own optimizer) is refused, for mdistiller's
own ``tools/train.py`` to run.

``--smoke`` runs the real loop for two short epochs (the second past ``SLD.GAMMA``) and one
evaluation per epoch on synthetic CIFAR-shaped data with a randomly initialised teacher: a
check that everything is wired, on a CPU in seconds. ``--synthetic N`` runs the config as it
is (batch, epochs, loaders) on N synthetic training images and N / 5 test images (CIFAR-100's proportion) with a
random teacher: the real loop's speed without the dataset or the teacher release.

``--fast`` (``SLKD.FAST``) turns on what pays on a GPU: CUDA graphs, the fused loss, bf16
autocast, channels-last and the device-side views, each where it applies; a key the run sets
itself (its flag, a ``KEY VALUE`` override, the config file) keeps its value
(:mod:`slkd.host.fast`). It is refused on a CPU. Eager fp32 is the default.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import os
import shlex
import sys
import warnings

import torch

from slkd.errors import UsageError
from slkd.host import fast, protocol
from slkd.utils.checkpoint import CheckpointError, drop_resume_checkpoints, has_resume_checkpoint
from slkd.utils.distributed import launched_by_torchrun
from slkd.utils.locks import Claimed, claim
from slkd.utils.settings import EXECUTION_KEYS, is_under

SMOKE_ITERATIONS = 2
SMOKE_BATCH = 8
SMOKE_TEST_IMAGES = 32
CIFAR100_TRAIN_IMAGES, CIFAR100_TEST_IMAGES = 50000, 10000  # --synthetic N tests on N / 5, as CIFAR-100
LOCK_NAME = "train.lock"  # locked by the slkd-train training in the run folder; holds its pid
#: Overrides that say where or how a run executes, or how long it trains: left out of the run
#: folder's name (mdistiller's convention names the others), so --resume finds the run
UNNAMED_KEYS = (*EXECUTION_KEYS, "SOLVER.EPOCHS", "SLKD.AMP")
CALIBRATION_IMAGES = 256


def parse_args(argv=None):
    parser = argparse.ArgumentParser("slkd-train", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cfg", type=str, default="",
        help="mdistiller-style YAML config: a file, else a name among slkd's shipped configs (e.g. cifar100/sld/res32x4_res8x4.yaml)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run from its last complete epoch")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--smoke", action="store_true", help="a few iterations on synthetic data, random teacher")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N", help="N synthetic training images, random teacher, config unchanged")
    parser.add_argument("--seed", type=int, default=None, help="sets SLKD.SEED")
    parser.add_argument("--deterministic", action="store_true", help="sets SLKD.DETERMINISTIC")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="sets SLKD.AMP")
    parser.add_argument("--channels-last", action="store_true", help="sets SLKD.CHANNELS_LAST")
    parser.add_argument("--fused-loss", action="store_true", help="sets SLKD.FUSED_LOSS (SLD's loss in two Triton kernels; CUDA)")
    parser.add_argument("--cuda-graphs", action="store_true", help="sets SLKD.CUDA_GRAPHS (the training step replayed as one CUDA graph)")
    parser.add_argument("--device-views", action="store_true", help="sets SLKD.DEVICE_VIEWS (CIFAR-100's two views made in batches on the training device)")
    parser.add_argument("--fast", action="store_true", help="sets SLKD.FAST (CUDA graphs, fused loss, bf16, channels-last, device views; GPU); keys set explicitly keep their values")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases (off by default)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args(argv)
    _check_no_flag_in_overrides(args.opts)
    return args


def _check_no_flag_in_overrides(opts) -> None:
    """argparse takes everything after the first ``KEY VALUE`` override as overrides; a
    ``--flag`` there would otherwise be reported as a config key or an odd pair."""
    flags = [item for item in opts if item.startswith("--") and item[2:3].isalpha()]
    if flags:
        raise UsageError(
            f"{flags[0]} comes after the KEY VALUE overrides: put flags before them "
            f"(slkd-train --cfg FILE {flags[0]} ... KEY VALUE ...)"
        )


def build_config(args, host_cfg):
    """The merged, validated config for ``args``."""
    from slkd.host.config import load_config, validate_loss_weights, validate_run_options, validate_sld, validate_trainer
    from slkd.host.protocol import validate_protocol
    from slkd.shipped import resolve_config

    if not args.cfg:
        raise UsageError("--cfg is missing: give a config, e.g. slkd-train --cfg cifar100/sld/res32x4_res8x4.yaml")
    config_file = resolve_config(args.cfg)
    cfg = load_config(host_cfg, config_file, list(args.opts))
    if args.seed is not None:
        cfg.SLKD.SEED = args.seed
    if args.deterministic:
        cfg.SLKD.DETERMINISTIC = True
    if args.amp is not None:
        cfg.SLKD.AMP = args.amp
    if args.channels_last:
        cfg.SLKD.CHANNELS_LAST = True
    if args.fused_loss:
        cfg.SLKD.FUSED_LOSS = True
    if args.cuda_graphs:
        cfg.SLKD.CUDA_GRAPHS = True
    if args.device_views:
        cfg.SLKD.DEVICE_VIEWS = True
    if args.fast:
        cfg.SLKD.FAST = True
    if cfg.SLKD.FAST:
        kept = fast.expand(cfg, _explicit_keys(args, config_file), torchrun=launched_by_torchrun())
        fast.check(cfg, resolve_device(args.device))
        if int(os.environ.get("RANK", "0")) == 0:
            print(fast.summary(cfg, kept), flush=True)
    # mdistiller logs to W&B by default; slkd-train when asked: --wandb, or a LOG.WANDB True override
    overridden = "LOG.WANDB" in list(args.opts)[::2]
    cfg.LOG.WANDB = bool(args.wandb) or (overridden and bool(cfg.LOG.WANDB))
    validate_run_options(cfg)  # the values as given, before --smoke shrinks them
    validate_trainer(cfg)
    validate_loss_weights(cfg)
    if cfg.SOLVER.TRAINER != "slkd":
        print(f"[slkd] SOLVER.TRAINER {cfg.SOLVER.TRAINER!r} -> 'slkd': the same method, run with slkd's trainer", flush=True)
        cfg.SOLVER.TRAINER = "slkd"
    if args.smoke:
        _shrink_for_smoke(cfg)
    if cfg.DISTILLER.TYPE == "SLD":
        validate_sld(cfg)
    validate_protocol(cfg)
    cfg.freeze()
    return cfg


# the keys a flag of slkd-train sets, by the flag's attribute in the parsed arguments
FLAG_KEYS = {
    "amp": "SLKD.AMP",
    "channels_last": "SLKD.CHANNELS_LAST",
    "fused_loss": "SLKD.FUSED_LOSS",
    "cuda_graphs": "SLKD.CUDA_GRAPHS",
    "device_views": "SLKD.DEVICE_VIEWS",
}


def _explicit_keys(args, config_file) -> set:
    """The config keys the run sets itself: in its config file (``config_file``, ``--cfg``
    resolved), as ``KEY VALUE`` overrides, or by a flag (``--fast`` leaves these as they are)."""
    import yaml

    from slkd.utils.settings import flatten

    keys = set(list(args.opts)[::2])
    keys |= {key for attribute, key in FLAG_KEYS.items() if getattr(args, attribute) not in (None, False)}
    if config_file:
        with open(config_file) as handle:  # read and checked by load_config already
            keys |= set(flatten(yaml.safe_load(handle) or {}))
    return keys


def _shrink_for_smoke(cfg) -> None:
    cfg.SOLVER.EPOCHS = 2
    cfg.SOLVER.BATCH_SIZE = min(cfg.SOLVER.BATCH_SIZE, SMOKE_BATCH)
    cfg.DATASET.TEST.BATCH_SIZE = min(cfg.DATASET.TEST.BATCH_SIZE, SMOKE_TEST_IMAGES)
    cfg.SLD.GAMMA = 1
    if cfg.SLKD.LOADER.WORKERS < 0:  # auto: no worker processes for a few images
        cfg.SLKD.LOADER.WORKERS = 0
    cfg.LOG.PREFIX = os.path.join(cfg.LOG.PREFIX, "smoke")


def experiment_name(cfg, opts) -> str:
    """mdistiller's run name: ``PROJECT/(NAME or TAG)`` plus ``key:value`` of the overrides
    that change the method (not those of :data:`UNNAMED_KEYS`)."""
    name = cfg.EXPERIMENT.NAME or cfg.EXPERIMENT.TAG
    extra = ",".join(f"{k}:{v}" for k, v in zip(opts[::2], opts[1::2]) if not is_under(str(k), UNNAMED_KEYS))
    return os.path.join(cfg.EXPERIMENT.PROJECT, name + extra)


def resolve_device(requested):
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no GPU here; use --device cpu, or install a CUDA build of torch")
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def synthetic_sizes(args, cfg):
    """(train, test) image counts of the synthetic data, or None for the real dataset."""
    if (args.smoke or args.synthetic is not None) and cfg.DATASET.TYPE != "cifar100":
        flag = "--smoke" if args.smoke else "--synthetic"
        raise UsageError(
            f"{flag} makes CIFAR-100-shaped data (32 x 32, 100 classes), and this config trains on "
            f"{cfg.DATASET.TYPE}: use a CIFAR-100 config for {flag}, or drop it to train on the real data"
        )
    if args.smoke:
        return cfg.SOLVER.BATCH_SIZE * SMOKE_ITERATIONS, SMOKE_TEST_IMAGES
    if args.synthetic is not None:
        if args.synthetic < cfg.SOLVER.BATCH_SIZE:
            raise UsageError(f"--synthetic {args.synthetic}: give at least one batch ({cfg.SOLVER.BATCH_SIZE} images)")
        return args.synthetic, synthetic_test_images(args.synthetic)
    return None


def synthetic_test_images(train_images: int) -> int:
    """Test images for ``--synthetic train_images``: CIFAR-100's proportion (10,000 for 50,000),
    at least one."""
    return max(1, min(CIFAR100_TEST_IMAGES, -(-train_images * CIFAR100_TEST_IMAGES // CIFAR100_TRAIN_IMAGES)))


def datasets(host, cfg, synthetic):
    """Train and test datasets: the host's own, or ``synthetic = (train, test)`` CIFAR-shaped
    ones (with CRD's contrastive sampling when the method is CRD)."""
    from slkd.host import data

    if synthetic:
        contrast = {"contrast_k": int(cfg.CRD.NCE.K), "contrast_mode": cfg.CRD.MODE} if cfg.DISTILLER.TYPE == "CRD" else {}
        train, test = data.synthetic_cifar100_sets(*synthetic, seed=int(cfg.SLKD.SEED), **contrast)
        return train, test, 100
    data_root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(host.package.__file__))), "data")
    data.check_dataset_files(cfg, data_root)
    from mdistiller.dataset import get_dataset

    train_loader, val_loader, _num_data, num_classes = get_dataset(cfg)
    _check_labels(train_loader.dataset, num_classes)
    return train_loader.dataset, val_loader.dataset, num_classes


def _check_labels(dataset, num_classes: int) -> None:
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) == 0:
        return
    low, high = min(targets), max(targets)
    if low < 0 or high >= num_classes:
        raise UsageError(f"dataset labels range from {low} to {high} but the models have {num_classes} classes (0..{num_classes - 1})")


def _calibrate_batchnorm(model, images) -> None:
    """Give a random teacher BatchNorm statistics of the smoke data, so its logits stay in a
    trained network's range instead of growing with depth."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


def build_distiller(host, cfg, num_classes: int, synthetic: bool, num_data: int, calibration_images=None, device_type: str = "cpu"):
    from slkd.host import models

    models.check_names(host, cfg)
    student = models.build_student(host, cfg, num_classes)
    if cfg.DISTILLER.TYPE == "NONE":
        return host.distiller_dict["NONE"](student)
    if cfg.DISTILLER.TYPE not in host.distiller_dict:
        raise UsageError(f"DISTILLER.TYPE {cfg.DISTILLER.TYPE!r} is unknown; known: {', '.join(sorted(host.distiller_dict))}")
    teacher = models.build_teacher(host, cfg, num_classes, pretrained=not synthetic)
    teacher.requires_grad_(False)
    if synthetic:
        _calibrate_batchnorm(teacher, calibration_images)
    distiller_class = host.distiller_dict[cfg.DISTILLER.TYPE]
    if cfg.DISTILLER.TYPE == "CRD":
        with _crd_sampler_kept_on_cpu(distiller_class, device_type):
            return distiller_class(student, teacher, cfg, num_data)
    distiller = distiller_class(student, teacher, cfg)
    protocol.check_applied(distiller, cfg)
    _ask_for_two_views(distiller)
    return distiller


def _ask_for_two_views(distiller) -> None:
    """slkd's trainer feeds a distiller the views its ``num_views`` asks for, one when it says
    nothing. A host distiller that takes ``image_strong`` without saying so (the MLKD fork's
    ``KD_ours``, fed two views by the fork's ``ours`` trainer) is told to take two."""
    if not hasattr(distiller, "num_views") and "image_strong" in inspect.signature(distiller.forward_train).parameters:
        distiller.num_views = 2


@contextlib.contextmanager
def _crd_sampler_kept_on_cpu(distiller_class, device_type: str):
    """mdistiller's CRD moves its negative sampler (``AliasMethod``) to CUDA when built, which
    fails where there is none. The sampler is unused when the loader supplies the
    contrastive indices, as slkd's loaders do, so on a CPU it simply stays where it is."""
    if device_type == "cuda":
        yield
        return
    alias_method = importlib.import_module(distiller_class.__module__).AliasMethod
    original = alias_method.cuda
    alias_method.cuda = lambda self: self
    try:
        yield
    finally:
        alias_method.cuda = original


def run(argv=None) -> float:
    """Parse, set up and train; returns the best test top-1."""
    import slkd
    from slkd.host.registry import import_host
    from slkd.host.runtime import configure_backends

    args = parse_args(argv)
    slkd.register()
    host = import_host()
    cfg = build_config(args, host.cfg)
    device_type = resolve_device(args.device)
    configure_backends(cfg, device_type)  # before the models are built; the trainer sets them again
    name = experiment_name(cfg, list(args.opts))
    folder = os.path.normpath(os.path.join(cfg.LOG.PREFIX, name))
    if args.resume:
        _check_resumable(folder)
    main_process = int(os.environ.get("RANK", "0")) == 0
    made = _missing_folders(folder) if main_process else []
    lock = _claim_run_folder(folder, cfg.LOG.PREFIX) if main_process else None
    try:
        return _train(args, host, cfg, device_type, name, argv)
    except KeyboardInterrupt:
        if not has_resume_checkpoint(folder):
            raise Interrupted(f"interrupted before the first epoch ended: nothing saved in {folder}; start it again") from None
        raise Interrupted(
            f"interrupted: {folder} keeps its last complete epoch; continue it with: {_resume_command(argv)}"
        ) from None
    finally:
        if lock is not None:
            lock.close()
            _remove_if_unused(folder, made)


def _train(args, host, cfg, device_type: str, name: str, argv) -> float:
    """Train the run ``name`` of the built config; returns the best test top-1."""
    from slkd.host.runtime import seed_everything
    from slkd.host.trainer import SLKDTrainer
    from slkd.utils import distributed

    if args.smoke and not args.resume:
        # a smoke run (under LOG.PREFIX/smoke) is disposable: a fresh one replaces the last one,
        # whose checkpoints every process drops before they meet in the process group
        drop_resume_checkpoints(os.path.join(cfg.LOG.PREFIX, name))
    context = distributed.init(device_type)
    try:
        seed_everything(int(cfg.SLKD.SEED), epoch=0)  # the student's (and a random teacher's) initial weights
        synthetic = synthetic_sizes(args, cfg)
        train_set, test_set, num_classes = datasets(host, cfg, synthetic)
        calibration = torch.stack([test_set[i][0] for i in range(min(len(test_set), CALIBRATION_IMAGES))]) if synthetic else None
        distiller = build_distiller(host, cfg, num_classes, bool(synthetic), len(train_set), calibration, device_type)
        if context.is_main:
            _print_batch_and_lr(cfg, context)
            line = fast.hint(cfg, device_type)
            if line:
                print(line, flush=True)
            if cfg.LOG.WANDB:
                _start_wandb(cfg, name)
        trainer = SLKDTrainer(
            name,
            distiller,
            _AsLoader(train_set),
            _AsLoader(test_set),
            cfg,
            context=context,
            argv=["slkd-train"] + list(argv if argv is not None else sys.argv[1:]),
            host_package=host.package,
            smoke=args.smoke,
        )
        return trainer.train(resume=args.resume)
    finally:
        distributed.shutdown()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says how to continue it."""


def _resume_command(argv) -> str:
    """The command line that continues this run: this one with ``--resume`` (before any
    ``KEY VALUE`` override, where flags belong)."""
    args = list(argv if argv is not None else sys.argv[1:])
    if "--resume" not in args:
        args.insert(0, "--resume")
    return shlex.join(["slkd-train", *args])


def _claim_run_folder(folder: str, prefix: str):
    """Make the run folder and lock it for this process (:data:`LOCK_NAME`); UsageError naming
    the fix when it cannot be made or another slkd-train trains there. A lock left by a killed
    process is taken over."""
    try:
        return claim(folder, LOCK_NAME)
    except Claimed as claimed:
        raise UsageError(
            f"{folder} is in use by another slkd-train (pid {claimed.holder}): wait for it to end, or give "
            "this run another folder (LOG.PREFIX, EXPERIMENT.NAME or EXPERIMENT.TAG)"
        ) from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise UsageError(
            f"cannot make the run folder {folder} under LOG.PREFIX {prefix}: {reason} ({error.filename}); "
            "give LOG.PREFIX a folder you can write to, e.g. LOG.PREFIX ./output"
        ) from None


def _missing_folders(folder: str) -> list[str]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def _remove_if_unused(folder: str, made: list[str]) -> None:
    """After a run that stopped before writing anything: drop its lock file and the folders
    this run made, so that a failed start leaves no empty run folder behind."""
    with contextlib.suppress(OSError):
        if os.listdir(folder) == [LOCK_NAME]:
            os.unlink(os.path.join(folder, LOCK_NAME))
        for path in made:
            os.rmdir(path)  # only when empty: stops at the first that holds anything


def _check_resumable(folder: str) -> None:
    """Fail in the first second, before data and models load, when --resume has nothing to resume."""
    if not has_resume_checkpoint(folder):
        raise CheckpointError(
            f"--resume found no usable checkpoint in {folder}: neither latest nor latest.prev exists. "
            "Start without --resume, or give the same --cfg, overrides and LOG.PREFIX as the run to resume"
        )


def _start_wandb(cfg, name: str) -> None:
    try:
        import wandb
    except ImportError:
        raise UsageError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from None
    import yaml

    wandb.init(project=cfg.EXPERIMENT.PROJECT, name=name, config=yaml.safe_load(cfg.dump()))


def _print_batch_and_lr(cfg, context) -> None:
    per_process = cfg.SOLVER.BATCH_SIZE // context.world_size
    print(
        f"[slkd] {cfg.DISTILLER.TYPE}: {cfg.DISTILLER.TEACHER} -> {cfg.DISTILLER.STUDENT}, global batch "
        f"{cfg.SOLVER.BATCH_SIZE} = {context.world_size} process(es) x {per_process}, lr {cfg.SOLVER.LR}, "
        f"{cfg.SOLVER.EPOCHS} epochs, device {context.device}",
        flush=True,
    )


class _AsLoader:
    """What the trainer reads of a host loader: its dataset."""

    def __init__(self, dataset):
        self.dataset = dataset


def main(argv=None) -> int:
    """Console entry point: known errors print one clear line and exit 1."""
    from slkd.errors import KNOWN_ERRORS

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            best = run(argv)
        except KNOWN_ERRORS as error:
            print(f"slkd-train: error: {error}", file=sys.stderr)
            return 1
        except Interrupted as interrupted:
            print(f"slkd-train: {interrupted}", file=sys.stderr)
            return 130
        except KeyboardInterrupt:
            print("slkd-train: interrupted before training started: nothing to resume", file=sys.stderr)
            return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[slkd] best test top-1: {best:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
