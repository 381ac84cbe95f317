"""Speed benchmark of slkd's SLD against the released code's way of computing it.

    python benchmarks/sld_speed.py [--device cpu|cuda] [--quick] [--only loss,step,...]
                                   [--iters N] [--warmup N] [--out FILE.json] [--md FILE.md]

Sub-benchmarks (all by default, pick with ``--only``):

``loss``            the SLD loss, forward and backward, both views, at epoch 1 (teacher swap
                    only) and 200 (pseudo-teacher on), 64x100 and 512x1000: a literal
                    one-temperature-at-a-time implementation written here in the released
                    code's style, all temperatures in one autograd graph, slkd's
                    ``SLDLoss.terms``, its fused Triton kernels (CUDA), the fused loss
                    recorded as a CUDA graph and replayed (CUDA), and optionally
                    ``torch.compile`` of it; value and gradient differences against the
                    literal one, and the torch ops each makes per call, are recorded.
``step``            one training step, resnet32x4 -> resnet8x4, batch 64, device-resident data:
                    slkd's SLD through ``SLKDTrainer.step`` (fp32, bf16, bf16 +
                    channels_last, fp16 with a scaler), the same two-view step with the
                    distillation loss removed, and a released-style step (nn.DataParallel,
                    the loss pulled to the host every step), plus the real released SLD class
                    when ``SLKD_RELEASED_SLD_PATH`` names its checkout. On CUDA also the
                    opt-in modes: ``slkd-fused`` (``SLKD.FUSED_LOSS``) and ``slkd-graphs``
                    (``SLKD.CUDA_GRAPHS`` with the fused loss), with a CE-only step in graphs.
                    With --fast (CUDA): ``slkd-fast``, slkd-train's ``--fast`` with its views
                    made on the device in each step. All variants are timed interleaved.
``sync``            (CUDA) 20 slkd steps under ``torch.cuda.set_sync_debug_mode("error")``.
``loader``          an epoch (on CUDA a whole CIFAR-100 epoch) through slkd's two-view loader
                    against the same steps fed from device memory, the loader with fewer
                    workers, the device views (``SLKD.DEVICE_VIEWS``) and mdistiller's fixed
                    2 workers; and CIFAR-100's two views per core, PIL against the device
                    views on CPU tensors.
``epoch-estimate``  a 240-epoch CIFAR-100 run in minutes, from the loader-fed step time, a
                    measured evaluation pass and a measured checkpoint save (eager, and on
                    CUDA also with CUDA graphs and the fused loss, and with --fast fed by its
                    device views).

``step``, ``sync``, ``loader`` and ``epoch-estimate`` need mdistiller (``SLKD_MDISTILLER_PATH``
or an installed one); without it they are recorded as skipped with the reason and ``loss``
still runs. See benchmarks/README.md for what every figure means.

Modules: ``common`` (constants, settings, timing, tables), ``host`` (mdistiller, trainers,
the released SLD), one per section (``loss``, ``step``, ``sync``, ``loader``, ``estimate``),
``record`` (facts, targets, the JSON and markdown) and ``cli``. ``benchmarks/sld_speed.py``
runs :func:`speed.cli.main`.
"""
