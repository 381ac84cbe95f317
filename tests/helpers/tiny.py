"""Small stand-ins for testing slkd's trainer on a CPU without mdistiller.

``TinyDistiller`` follows mdistiller's ``Distiller`` contract (student and teacher that
return ``(logits, features)``, teacher kept in eval mode, ``forward_train`` in training and
the student's logits in eval) and computes SLD with slkd's own ``SLDLoss`` over two views,
as ``slkd.host.distillers.SLD`` does. By default the networks have no BatchNorm, so runs
split over processes compute what one process computes.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from slkd.host.config import slkd_node, sld_node
from slkd.host.data import SyntheticCIFAR100
from slkd.host.views import TwoViews, cifar100_test_transform, two_view_transform
from slkd.losses.sld import SLDLoss


class TinyNet(nn.Module):
    def __init__(self, num_classes=10, width=8, batchnorm=False):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = x.to(self.conv.weight.dtype)  # the loaders give float32 images; a float64 net casts them
        features = F.adaptive_avg_pool2d(F.relu(self.norm(self.conv(x))), 1).flatten(1)
        return self.head(features), {"pooled": features}


class TinyDistiller(nn.Module):
    num_views = 2

    def __init__(self, student, teacher, cfg, nan_at=None, connector=False):
        super().__init__()
        self.student, self.teacher = student, teacher
        # trained beside the student, as FitNet's regressor or CRD's embeddings are
        self.connector = nn.Linear(8, 8) if connector else None
        self.criterion = SLDLoss(temperatures=list(cfg.SLD.TEMPERATURES), gamma=cfg.SLD.GAMMA)
        self.ce_weight, self.kd_weight = cfg.SLD.CE_WEIGHT, cfg.SLD.KD_WEIGHT
        self.nan_at = nan_at  # (epoch, call) at which the loss turns NaN, for tests
        self.calls = 0
        self.step_stats = {}

    def train(self, mode=True):
        super().train(mode)
        self.teacher.eval()
        return self

    def get_learnable_parameters(self):
        extra = list(self.connector.parameters()) if self.connector is not None else []
        return list(self.student.parameters()) + extra

    def forward(self, **kwargs):
        if self.training:
            return self.forward_train(**kwargs)
        return self.student(kwargs["image"])[0]

    def forward_train(self, image_weak, image_strong, target, epoch, **kwargs):
        self.calls += 1
        views = [image_weak, image_strong]
        student_out = [self.student(v) for v in views]
        student = [logits for logits, _ in student_out]
        with torch.no_grad():
            teacher_out = [self.teacher(v) for v in views]
            teacher = [logits for logits, _ in teacher_out]
        terms = self.criterion.terms(torch.cat(student), torch.cat(teacher), target.repeat(2), epoch)
        loss_kd = self.kd_weight * (terms.teacher_swap_loss + terms.student_swap_loss).sum() / target.shape[0]
        loss_ce = self.ce_weight * sum(F.cross_entropy(z, target) for z in student)
        if self.nan_at == (epoch, self.calls):
            loss_kd = loss_kd * float("nan")
        self.step_stats = {"teacher_swap_rate": terms.teacher_swap_rate}
        losses = {"loss_ce": loss_ce, "loss_kd": loss_kd}
        if self.connector is not None:
            losses["loss_feat"] = sum(
                F.mse_loss(self.connector(s[1]["pooled"]), t[1]["pooled"]) for s, t in zip(student_out, teacher_out)
            )
        return student[0], losses


def tiny_cfg(prefix, epochs=3, batch=8, seed=0):
    """A config with the keys slkd's trainer reads (mdistiller's names)."""
    cfg = CN()
    cfg.EXPERIMENT = CN({"PROJECT": "tiny", "NAME": "", "TAG": "tiny"})
    cfg.DATASET = CN({"TYPE": "cifar100", "NUM_WORKERS": 0, "TEST": CN({"BATCH_SIZE": 8})})
    cfg.DISTILLER = CN({"TYPE": "SLD", "TEACHER": "tiny", "STUDENT": "tiny"})
    cfg.SOLVER = CN(
        {
            "TRAINER": "slkd", "BATCH_SIZE": batch, "EPOCHS": epochs, "LR": 0.1,
            "LR_DECAY_STAGES": [2], "LR_DECAY_RATE": 0.1, "WEIGHT_DECAY": 5e-4,
            "MOMENTUM": 0.9, "TYPE": "SGD",
        }
    )
    cfg.LOG = CN({"PREFIX": str(prefix), "SAVE_CHECKPOINT_FREQ": 2, "WANDB": False, "TENSORBOARD_FREQ": 500})
    cfg.SLD = sld_node()
    cfg.SLD.GAMMA = 1
    cfg.SLKD = slkd_node()
    cfg.SLKD.SEED = seed
    cfg.SLKD.LOADER.WORKERS = 0
    return cfg


class Loader:
    def __init__(self, dataset):
        self.dataset = dataset


def tiny_datasets(train_size=24, test_size=16, num_classes=10, random_views=False):
    """Deterministic views (no random crop) by default; ``random_views``: CIFAR-100's weak and
    strong views (crop, flip, RandAugment, Cutout), whose draws the loader seeds per item."""
    transform = cifar100_test_transform()
    views = two_view_transform("cifar100") if random_views else TwoViews(transform, transform)
    train = SyntheticCIFAR100(train_size, views, seed=3, num_classes=num_classes)
    test = SyntheticCIFAR100(test_size, transform, seed=4, with_index=False, num_classes=num_classes)
    return train, test


def tiny_trainer(cfg, context=None, nan_at=None, model_seed=0, batchnorm=False, random_views=False, connector=False, dtype=torch.float32):
    """Teacher and student (and ``connector``: a module trained beside the student)
    initialised from ``model_seed`` in every process, in ``dtype`` (float64: runs that sum
    in another order, e.g. split over processes, agree far below the tests' tolerances)."""
    from slkd.host.trainer import SLKDTrainer

    torch.manual_seed(model_seed)
    student, teacher = TinyNet(batchnorm=batchnorm), TinyNet(batchnorm=batchnorm)
    distiller = TinyDistiller(student, teacher, cfg, nan_at=nan_at, connector=connector).to(dtype)
    train, test = tiny_datasets(random_views=random_views)
    return SLKDTrainer("tiny/run", distiller, Loader(train), Loader(test), cfg, context=context, argv=["test"])


def set_keys(cfg, settings: dict):
    """Set ``{"NODE.KEY": value}`` in the config ``cfg``; returns ``cfg``."""
    for key, value in settings.items():
        node, name = key.rsplit(".", 1)
        target = cfg
        for part in node.split("."):
            target = target[part]
        target[name] = value
    return cfg
