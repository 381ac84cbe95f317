"""Teacher and student networks from the host's model tables, with errors that say the fix."""

from __future__ import annotations

import os

import torch

from slkd.errors import ModelError
from slkd.host.registry import Host


# The same ImageNet network under the two hosts' names: upstream mdistiller's MobileNetV1 is
# the MLKD fork's (and the released SLD code's) MobileNetV2.
IMAGENET_ALIASES = {"MobileNetV1": "MobileNetV2", "MobileNetV2": "MobileNetV1"}



def resolve_name(host: Host, dataset_type: str, name: str) -> str:
    """``name``, or its alias on this host when the host knows the network by the other name."""
    table = model_table(host, dataset_type)
    if name not in table and dataset_type == "imagenet" and IMAGENET_ALIASES.get(name) in table:
        return IMAGENET_ALIASES[name]
    return name


def model_table(host: Host, dataset_type: str) -> dict:
    """Name -> constructor for ``dataset_type`` (CIFAR entries are (constructor, checkpoint))."""
    if dataset_type == "cifar100":
        return host.cifar_model_dict
    if dataset_type == "imagenet":
        return host.imagenet_model_dict
    raise ModelError(f"DATASET.TYPE {dataset_type!r} is not supported by slkd: use cifar100 or imagenet")


def check_names(host: Host, cfg) -> None:
    """Fail early on a teacher or student the host does not know, listing the known ones."""
    table = model_table(host, cfg.DATASET.TYPE)
    for role in ("TEACHER", "STUDENT"):
        name = resolve_name(host, cfg.DATASET.TYPE, cfg.DISTILLER[role])
        if name not in table:
            raise ModelError(
                f"DISTILLER.{role} {name!r} is not a {cfg.DATASET.TYPE} model of this mdistiller; "
                f"known: {', '.join(sorted(table))}"
            )


def build_student(host: Host, cfg, num_classes: int):
    """A freshly initialised student."""
    table = model_table(host, cfg.DATASET.TYPE)
    entry = table[resolve_name(host, cfg.DATASET.TYPE, cfg.DISTILLER.STUDENT)]
    if cfg.DATASET.TYPE == "imagenet":
        return entry(pretrained=False)
    return entry[0](num_classes=num_classes)


def build_teacher(host: Host, cfg, num_classes: int, *, pretrained: bool = True, fetch_hint: str = "slkd-fetch teachers"):
    """The teacher, with its released weights unless ``pretrained`` is False (smoke runs)."""
    table = model_table(host, cfg.DATASET.TYPE)
    name = resolve_name(host, cfg.DATASET.TYPE, cfg.DISTILLER.TEACHER)
    if cfg.DATASET.TYPE == "imagenet":
        try:
            return table[name](pretrained=pretrained)
        except OSError as error:  # torchvision's download (URLError is an OSError)
            raise ModelError(
                f"could not get torchvision's pretrained weights for ImageNet teacher {name}: {error}. "
                "Run once where the network is reachable, or put the weights in torch's hub cache "
                f"({torch.hub.get_dir()}/checkpoints)."
            ) from None
    constructor, path = table[name]
    teacher = constructor(num_classes=num_classes)
    if not pretrained:
        return teacher
    if path is None:
        raise ModelError(f"mdistiller has no released checkpoint for {name}: it is a student-only model, pick a teacher among those with one")
    if not os.path.isfile(path):
        raise ModelError(
            f"teacher checkpoint for {name} is missing: {os.path.normpath(path)} does not exist. "
            f"Fetch the CIFAR-100 teachers with: {fetch_hint}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    except Exception as error:
        raise ModelError(
            f"teacher checkpoint {os.path.normpath(path)} is unreadable ({type(error).__name__}: {error}). "
            f"Fetch it again with: {fetch_hint} --force"
        ) from None
    try:
        teacher.load_state_dict(state)
    except RuntimeError as error:
        raise ModelError(_mismatch_message(name, path, state, teacher, num_classes, error)) from None
    return teacher


def _mismatch_message(name, path, state, teacher, num_classes, error) -> str:
    classifier = [value for key, value in state.items() if key.endswith(".weight") and value.dim() == 2]
    if classifier and classifier[-1].shape[0] != num_classes:
        return (
            f"teacher checkpoint {os.path.normpath(path)} predicts {classifier[-1].shape[0]} classes but "
            f"the dataset and the student have {num_classes}: teacher and student must share the classes"
        )
    expected = teacher.state_dict()
    where = f"teacher checkpoint {os.path.normpath(path)} does not fit architecture {name}"
    if state and all(key.startswith("module.") for key in state) and {key[len("module."):] for key in state} == set(expected):
        return (
            f"{where}: its keys carry DataParallel's 'module.' prefix (it was saved from a wrapped model). "
            "Save it again without the prefix, e.g. torch.save({'model': {k.removeprefix('module.'): v for k, v in "
            "state.items()}}, path)"
        )
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        f"{key} {tuple(state[key].shape)} (the model's {tuple(expected[key].shape)})"
        for key in expected
        if key in state and hasattr(state[key], "shape") and state[key].shape != expected[key].shape
    ]
    parts = [
        f"{len(found)} {what}, e.g. {', '.join(found[:2])}"
        for what, found in (("missing key(s)", missing), ("unexpected key(s)", unexpected), ("weight(s) of another shape", reshaped))
        if found
    ] or [str(error).replace("\n", " ").strip()]
    return (
        f"{where}: {'; '.join(parts)}. It holds another network: put {name}'s checkpoint there "
        "(slkd-fetch teachers --force), or set DISTILLER.TEACHER to the network it was trained as"
    )
