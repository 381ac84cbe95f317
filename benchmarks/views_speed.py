"""CIFAR-100's two views, images per second per core: the PIL path against the device views
made on CPU tensors (issue 17). ``benchmarks/sld_speed.py``'s loader section records
:func:`measure_views`; on its own::

    python benchmarks/views_speed.py [--batch 64] [--batches 4] [--rounds 5] [--threads 1]

prints the record as JSON.

**Per core**: images per second divided by the cores the path keeps busy. PIL: slkd's loader
path with one worker process (``SeededItems`` seeding each item, ``Cifar100TwoViews`` making
both views, one image at a time, batches collated and passed to this process), so its rate
is per worker; the main process only receives the batches. Device views: the host-side draws
and the batched ops together, in this process with ``threads`` torch intra-op threads, so its
rate is divided by ``threads``. Both are timed in one process, interleaved round by round
(each round: ``batches`` batches of ``batch`` images through each path, the PIL worker
started and one batch loaded before its clock starts); each rate is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.data import DataLoader, SequentialSampler

PER_CORE = (
    "images per second divided by the cores the path keeps busy: PIL, loader worker processes "
    "(1: slkd's SeededItems + Cifar100TwoViews in one worker, batches collated); device views, "
    "torch intra-op threads (host-side draws and batched ops on CPU tensors in the timing process)"
)


def measure_views(batch: int = 64, batches: int = 4, rounds: int = 5, threads: int = 1, seed: int = 0, epoch: int = 1) -> dict:
    """Time both paths on a CIFAR-100-shaped set of random pixels; the record's rates are
    images per second per core (see the module docstring) and ``views_speedup_per_core`` is
    device views / PIL."""
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="batches per round and path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the device views")
    args = parser.parse_args(argv)
    print(json.dumps(measure_views(args.batch, args.batches, args.rounds, args.threads), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
