"""``loader``: an epoch of the real epoch loop fed by slkd's loaders (PIL in the workers with
the default, half and four workers; the device views of ``SLKD.DEVICE_VIEWS``, the workers
only drawing) against the same steps fed from device memory, and CIFAR-100's two views per
core, PIL against the device views.

**Per core** (:func:`measure_views`): images per second divided by the cores the path keeps
busy. PIL: slkd's loader path with one worker process (``SeededItems`` seeding each item,
``Cifar100TwoViews`` making both views, one image at a time, batches collated and passed to
this process), so its rate is per worker; the main process only receives the batches. Device
views: the host-side draws and the batched ops together, in this process with ``threads``
torch intra-op threads, so its rate is divided by ``threads``. Both are timed in one process,
interleaved round by round (each round: ``batches`` batches of ``batch`` images through each
path, the PIL worker started and one batch loaded before its clock starts); each rate is the
median over rounds.
"""

from __future__ import annotations

import statistics
import time

import torch

from torch.utils.data import DataLoader, SequentialSampler

from .common import EPOCH_ON, Settings, Timer, md_table, quiet
from .host import Bench


def bench_loader(settings: Settings, timer: Timer, shared: dict, bench: Bench, contrast=True, mode="eager") -> dict:
    """K iterations of ``trainer.train_epoch`` (the SLD step at epoch 200 in ``mode``: fp32
    eager, ``graphs``, or ``fast`` with its device views) fed from device memory and from the
    trainer's own loader; with ``contrast`` also slkd's PIL loader with fewer workers,
    mdistiller's 2 workers, the device views (``SLKD.DEVICE_VIEWS``) with the default
    workers, and the two views per core (:func:`measure_views`)."""
    from slkd.host import data
    from slkd.host.views import cifar100_test_transform, two_view_transform

    s = settings
    k = s.loader_iters
    train_set = data.SyntheticCIFAR100(k * s.batch, transform=two_view_transform("cifar100"), seed=0)
    test_set = data.SyntheticCIFAR100(s.eval_images, transform=cifar100_test_transform(), seed=1, with_index=False)
    trainer = bench.trainer("SLD", "fp32", train_set, test_set, workers=-1, mode=mode)
    real_loader = trainer.train_loader
    warm = max(1, min(k, s.step_warmup), getattr(trainer.step_graphs, "warmup_steps", -1) + 1)

    def epoch_seconds(trainer):
        timer.sync()
        tick = time.perf_counter()
        with quiet():
            metrics = trainer.train_epoch(EPOCH_ON)
        seconds = time.perf_counter() - tick
        assert metrics["train_images"] == k * s.batch, metrics
        return seconds

    def warm_up(trainer, loader):  # its persistent workers started, with a few steps
        for index, loaded in enumerate(loader):
            trainer.step(*trainer.to_device(loaded), EPOCH_ON)
            if index + 1 >= warm:
                break

    # the same K steps fed from device memory, through the same epoch loop (with the device
    # views the batch is made already: they are left out)
    made_on_device, trainer.device_views = trainer.device_views, None
    images, target, extras = trainer.to_device(bench.images(cpu=True))
    batch = (images, target, extras["index"])
    trainer.train_loader = [batch] * warm
    with quiet():
        trainer.train_epoch(EPOCH_ON)
    trainer.train_loader = [batch] * k
    synthetic = epoch_seconds(trainer)
    trainer.device_views = made_on_device

    # the trainer's own loader: warmed up, then a timed epoch
    trainer.train_loader = real_loader
    warm_up(trainer, real_loader)
    fed = epoch_seconds(trainer)
    own = "device views (SLKD.DEVICE_VIEWS), workers drawing" if made_on_device is not None else "slkd train_loader"
    rows = [
        {"feed": "device memory (no loader)", "workers": None, "seconds": synthetic},
        {"feed": own, "workers": real_loader.num_workers, "pin_memory": real_loader.pin_memory, "persistent_workers": real_loader.persistent_workers, "prefetch_factor": real_loader.prefetch_factor, "seconds": fed},
    ]
    if contrast:
        # slkd's loader with fewer workers (15, 7 and 4 on a 16-core machine): does the default's number of workers pay?
        for workers in sorted({max(1, real_loader.num_workers // 2), min(4, real_loader.num_workers)} - {real_loader.num_workers}, reverse=True):
            trainer.train_loader = DataLoader(
                real_loader.dataset, batch_size=s.batch, sampler=real_loader.sampler, drop_last=real_loader.drop_last, num_workers=workers,
                pin_memory=real_loader.pin_memory, persistent_workers=real_loader.persistent_workers, prefetch_factor=real_loader.prefetch_factor,
            )  # fmt: skip
            warm_up(trainer, trainer.train_loader)
            rows.append({"feed": f"slkd train_loader, {workers} workers", "workers": workers, "seconds": epoch_seconds(trainer)})
            del trainer.train_loader  # its workers stop
        # the same step fed by the device views: the workers draw, the views are made on the device
        views_trainer = bench.trainer("SLD", "fp32", train_set, test_set, workers=-1, mode="views")
        warm_up(views_trainer, views_trainer.train_loader)
        rows.append({"feed": "device views (SLKD.DEVICE_VIEWS), workers drawing", "workers": views_trainer.train_loader.num_workers, "seconds": epoch_seconds(views_trainer)})
        del views_trainer
        trainer.train_loader = DataLoader(train_set, batch_size=s.batch, shuffle=True, num_workers=2)
        rows.append({"feed": "mdistiller-style DataLoader (2 workers, no pinning, not persistent)", "workers": 2, "seconds": epoch_seconds(trainer)})
    for row in rows:
        row["ms_per_iter"] = row["seconds"] * 1e3 / k
        row["images_per_s"] = k * s.batch / row["seconds"]
        row["x_device_memory"] = row["seconds"] / synthetic

    step = {"eager": f"the slkd SLD step at epoch {EPOCH_ON}, fp32", "graphs": f"the slkd SLD step at epoch {EPOCH_ON} in CUDA graphs with the fused loss, fp32", "fast": f"the slkd SLD step at epoch {EPOCH_ON} under --fast"}[mode]
    result = {
        "status": "ok",
        "what": f"trainer.train_epoch over K={k} iterations of batch {s.batch} ({step}, with the epoch loop's bookkeeping and its one read-back at the end), a CIFAR-100-shaped dataset of random pixels with the two-view transform",
        "iterations": k,
        "auto_workers": data.auto_workers(),
        "results": rows,
        "ratio": fed / synthetic,
        "ratio_mdistiller_2_workers": rows[-1]["seconds"] / synthetic if contrast else None,
        "notes": [] if not s.quick else ["--quick: a few iterations of a small model; not a measure of the loader"],
    }
    if contrast:
        result["ratio_device_views"] = rows[-2]["seconds"] / synthetic
        result["views"] = measure_views(batch=s.batch, batches=1 if s.quick else 4, rounds=1 if s.quick else 5)
        if s.cuda:
            result["views"]["gpu"] = measure_views_on_gpu(s.device, batch=s.batch, batches=2 if s.quick else 50)
    result["mode"] = mode
    shared[f"loader_trainer_{mode}"] = trainer
    return result


def loader_tables(section) -> str:
    rows = [[r["feed"], r["workers"], r["seconds"], r["ms_per_iter"], r["images_per_s"], r["x_device_memory"]] for r in section["results"]]
    table = md_table(["feed", "workers", f"seconds for {section['iterations']} iterations", "ms / iteration", "images / s", "x device memory"], rows)
    if "views" not in section:
        return table
    views = section["views"]
    rates = [["PIL two views (slkd loader, 1 worker)", views["pil_images_per_s_per_core"]], ["device views on CPU tensors", views["device_views_images_per_s_per_core"]], ["device views / PIL", views["views_speedup_per_core"]]]
    table += f"\n\nCIFAR-100 two views, batch {views['batch']}, images / s per core ({views['per_core']}):\n\n" + md_table(["path", "images / s per core"], rates)
    if "gpu" in views:
        gpu = views["gpu"]
        table += "\n\nDevice views on the GPU, ms per batch:\n\n" + md_table(["host draws (loader workers)", "views made on the GPU"], [[gpu["host_draw_ms_per_batch"], gpu["gpu_views_ms_per_batch"]]])
    return table


PER_CORE = (
    "images per second divided by the cores the path keeps busy: PIL, loader worker processes "
    "(1: slkd's SeededItems + Cifar100TwoViews in one worker, batches collated); device views, "
    "torch intra-op threads (host-side draws and batched ops on CPU tensors in the timing process)"
)


def measure_views(batch: int = 64, batches: int = 4, rounds: int = 5, threads: int = 1, seed: int = 0, epoch: int = 1) -> dict:
    """Time both paths on a CIFAR-100-shaped set of random pixels; the record's rates are
    images per second per core (see the module docstring) and ``views_speedup_per_core`` is
    device views / PIL (target 7: at least 3)."""
    from slkd.host.data import EpochTagged, SeededItems, SyntheticCIFAR100
    from slkd.host.device_views import DeviceViews
    from slkd.host.views import Cifar100TwoViews

    dataset = SyntheticCIFAR100((batches + 1) * batch, Cifar100TwoViews(), seed=seed, with_index=False)
    sampler = EpochTagged(SequentialSampler(dataset))
    sampler.set_epoch(epoch)
    loader = DataLoader(SeededItems(dataset, seed), batch_size=batch, sampler=sampler, num_workers=1)
    device_views = DeviceViews(dataset.data, seed, "cpu")
    index_batches = [range(start, start + batch) for start in range(0, batches * batch, batch)]

    def pil_seconds():
        feed = iter(loader)
        next(feed)  # the worker started and running
        tick = time.perf_counter()
        for _ in range(batches):
            next(feed)
        seconds = time.perf_counter() - tick
        del feed  # its worker stops
        return seconds

    def device_seconds():
        tick = time.perf_counter()
        for indices in index_batches:
            device_views.views_of(epoch, indices)
        return time.perf_counter() - tick

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        device_seconds()  # warm-up
        timings = [(pil_seconds(), device_seconds()) for _ in range(rounds)]
    finally:
        torch.set_num_threads(before)
    images = batches * batch
    pil_rate = images / statistics.median(pil for pil, _ in timings)
    device_rate = images / statistics.median(device for _, device in timings) / threads
    return {
        "views_speedup_per_core": device_rate / pil_rate,
        "pil_images_per_s_per_core": pil_rate,
        "device_views_images_per_s_per_core": device_rate,
        "per_core": PER_CORE,
        "pil_workers": 1,
        "device_views_threads": threads,
        "batch": batch,
        "images_per_round": images,
        "rounds": rounds,
        "seconds_per_round": [{"pil": pil, "device_views": device} for pil, device in timings],
    }


def measure_views_on_gpu(device, batch: int = 64, batches: int = 50, seed: int = 0, epoch: int = 1) -> dict:
    """The device views on a GPU, per batch: the host's draws (``draw_batch``, which a
    loader's workers make under ``SLKD.DEVICE_VIEWS``) and the views made from them on the
    GPU (``make``, timed from the first launch to a synchronisation after the last batch)."""
    from slkd.host.data import SyntheticCIFAR100
    from slkd.host.device_views import DeviceViews, draw_batch

    dataset = SyntheticCIFAR100(batches * batch, None, seed=seed)
    device_views = DeviceViews(dataset.data, seed, device)
    tick = time.perf_counter()
    draws = [draw_batch(device_views.views, seed, epoch, range(start, start + batch)).pin_memory() for start in range(0, batches * batch, batch)]
    draw_seconds = time.perf_counter() - tick
    device_views.make(draws[0])  # warm-up: allocator, kernels
    torch.cuda.synchronize(device)
    tick = time.perf_counter()
    for batch_draws in draws:
        device_views.make(batch_draws)
    torch.cuda.synchronize(device)
    make_seconds = time.perf_counter() - tick
    return {"batch": batch, "batches": batches, "host_draw_ms_per_batch": draw_seconds * 1e3 / batches, "gpu_views_ms_per_batch": make_seconds * 1e3 / batches}
