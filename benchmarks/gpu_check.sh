#!/usr/bin/env bash
# Every GPU check of the speed, benchmark and torchrun issues (all six parts take more than
# one 9-minute call on an H100 or H200; parts 1, 2 and 6 fit one, about 8.5 minutes as
# estimated from benchmarks/results runs 4 and 5 on H200s), from the repository root:
#
#   SLKD_MDISTILLER_PATH=/path/to/mdistiller [SLKD_RELEASED_SLD_PATH=/path/to/released-SLD] \
#   RESULTS=benchmarks/results/<card>-<date> [PARTS="1 2 3 4 5 6"] [SPEED_ONLY=step,sync] \
#   bash benchmarks/gpu_check.sh
#
# 1. the CUDA tests (GPU = CPU losses, no host-device sync in a step, CUDA-graph training
#    equal to eager training) and the fused loss's tests with its kernels compiled;
# 2. benchmarks/sld_speed.py: loss, step, sync, loader, full-run estimate;
# 3. slkd-bench: KD, DKD, CRD, MLKD, SLD on res32x4_res8x4, the real loop on synthetic data;
# 4. torchrun with one process (the DDP path) against the plain launcher;
# 5. SLD in bf16 and bf16 + channels_last, same seed as 4's plain run;
# 6. the opt-in modes through slkd-train, same seed as 4's plain run: --fused-loss, and
#    --cuda-graphs --fused-loss in fp32, fp16 and bf16 (their metrics should match eager
#    training's in the same precision: part 6 runs eager fp16 itself, and plain and bf16 where
#    parts 4 and 5 do not), and plain once more, whose drift from the first plain run is the
#    yardstick for "match" (cuDNN is not deterministic);
# SPEED_ONLY picks part 2's sections (sld_speed.py --only; default: all of them).
# Each part writes into $RESULTS and a failed part does not stop the others.
# DEVICE=cpu QUICK=1 runs the same parts small, to check the script itself.
set -u
RESULTS="${RESULTS:-benchmarks/results/gpu-check}"
DEVICE="${DEVICE:-cuda}"
SYNTHETIC="${SYNTHETIC:-6400}"
PARTS=" ${PARTS:-1 2 3 4 5 6} "
PY="${PYTHON:-python3}"
CFG=mdistiller_configs/cifar100/sld/res32x4_res8x4.yaml
RUNS="$(mktemp -d)"
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
SMALL=()
SPEED_ARGS=(--compile off)
if [ -n "${QUICK:-}" ]; then
  SPEED_ARGS=(--quick)
  SMALL=(SOLVER.BATCH_SIZE 16 SLKD.LOADER.WORKERS 0 DATASET.TEST.BATCH_SIZE 500)
fi
if [ -n "${SPEED_ONLY:-}" ]; then SPEED_ARGS+=(--only "$SPEED_ONLY"); fi
BENCH_SET=()
for ((i = 0; i < ${#SMALL[@]}; i += 2)); do BENCH_SET+=(--set "${SMALL[i]}" "${SMALL[i + 1]}"); done
part() { echo "[gpu_check] $(date +%T) $*"; }
wanted() { [[ "$PARTS" == *" $1 "* ]]; }

part "machine"
{ nvidia-smi 2>&1 || true; "$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"; nproc; } > "$RESULTS/machine.txt"

train() {  # name, launcher and its slkd-train flags...
  local name="$1"; shift
  timeout 300 "$@" --cfg "$CFG" --device "$DEVICE" --synthetic "$SYNTHETIC" --seed 0 \
    SOLVER.EPOCHS 2 SLD.GAMMA 1 LOG.PREFIX "$RUNS/$name" "${SMALL[@]}" > "$RESULTS/train_$name.log" 2>&1
  cp "$(find "$RUNS/$name" -name metrics.jsonl | head -n 1)" "$RESULTS/metrics_$name.jsonl" 2>/dev/null
  tail -n 2 "$RESULTS/train_$name.log"
}

if wanted 1; then
  part "1. CUDA tests"
  timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_losses_mlkd.py -k "cuda or gpu" > "$RESULTS/pytest_cuda.txt" 2>&1
  # (its GPU-free compile check is left to CI: the kernels compile for real here)
  timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_losses_sld_fused.py -k "not compile_for_nvidia" >> "$RESULTS/pytest_cuda.txt" 2>&1
  grep -E "passed|failed" "$RESULTS/pytest_cuda.txt"
fi
if wanted 2; then
  part "2. sld_speed"
  # capped so that part 6 still runs in a 9-minute call; the record is saved after each section
  timeout 360 "$PY" benchmarks/sld_speed.py --device "$DEVICE" "${SPEED_ARGS[@]}" --out "$RESULTS/sld_speed.json" > "$RESULTS/sld_speed.log" 2>&1
  tail -n 25 "$RESULTS/sld_speed.log"
fi
if wanted 4; then
  part "4. torchrun, one process, against the plain launcher"
  train plain "$PY" -m slkd.run.train
  train torchrun "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m slkd.run.train
fi
if wanted 3; then
  part "3. five methods side by side"
  timeout 400 "$PY" -m slkd.bench.cli run --pair res32x4_res8x4 --methods KD,DKD,CRD,MLKD,SLD --seeds 0 \
    --synthetic "$SYNTHETIC" --epochs 2 --device "$DEVICE" --out "$RUNS/bench" --set SLD.GAMMA 1 \
    "${BENCH_SET[@]}" > "$RESULTS/bench_run.log" 2>&1
  "$PY" -m slkd.bench.cli report "$RUNS/bench" >> "$RESULTS/bench_run.log" 2>&1
  cp "$RUNS"/bench/summary.md "$RUNS"/bench/summary.csv "$RUNS"/bench/*.png "$RESULTS"/ 2>/dev/null
  tail -n 4 "$RESULTS/bench_run.log"
fi
if wanted 5; then
  part "5. mixed precision"
  train bf16 "$PY" -m slkd.run.train --amp bf16
  train bf16_channels_last "$PY" -m slkd.run.train --amp bf16 --channels-last
fi
if wanted 6 && [ "$DEVICE" != cuda ]; then
  part "6. skipped: the fused loss and CUDA graphs need DEVICE=cuda"
elif wanted 6; then
  part "6. fused loss and CUDA graphs"
  # each graph run before the eager run it is compared with (where parts 4 and 5 did not
  # make it); the runs measured before (bf16, the fused loss alone) last, should time run out
  train graphs "$PY" -m slkd.run.train --fused-loss --cuda-graphs
  wanted 4 || train plain "$PY" -m slkd.run.train
  train graphs_fp16 "$PY" -m slkd.run.train --fused-loss --cuda-graphs --amp fp16
  train fp16 "$PY" -m slkd.run.train --amp fp16
  # the eager run once more: how far two runs of one setting drift apart (cuDNN is not
  # deterministic), to read the opt-in modes' differences against
  train plain_again "$PY" -m slkd.run.train
  train graphs_bf16 "$PY" -m slkd.run.train --fused-loss --cuda-graphs --amp bf16
  wanted 5 || train bf16 "$PY" -m slkd.run.train --amp bf16
  train fused "$PY" -m slkd.run.train --fused-loss
fi
part "done: $RESULTS"
