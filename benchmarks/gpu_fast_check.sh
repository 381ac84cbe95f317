#!/usr/bin/env bash
# The GPU targets of --fast and the device views in one call of at most 9 minutes on one
# H100 or H200, from the
# repository root:
#
#   SLKD_MDISTILLER_PATH=/path/to/mdistiller OUT=<folder> bash benchmarks/gpu_fast_check.sh
#
# 1. benchmarks/sld_speed.py --only sync,epoch-estimate --precisions fp32,fp16 (capped at
#    270 s): the sync check of every mode in fp32, bf16 and fp16 (fp16 with CUDA graphs
#    included) and of --fast with its device views, and the 240-epoch estimate eager, with
#    CUDA graphs + the fused loss, and with --fast fed by its device views (an epoch of 782
#    iterations each, against the same steps fed from device memory);
# 2. slkd-bench --fast: SLD res32x4 -> resnet8x4 on $SYNTHETIC synthetic images, 3 epochs
#    (the pseudo-teacher on from epoch 2), evaluated at the last only; one run alone (capped
#    at 100 s), then four at once on the same GPU (--parallel 4, capped at 170 s);
# 3. benchmarks/speed/fast_check.py: the targets' verdicts from what 1 and 2 wrote.
#
# Everything lands in $OUT (default benchmarks/results/gpu-fast-check): machine.json (card,
# torch, CUDA, cores, the command), sld_speed.{json,md,log}, bench_{one,four}/ (the runs'
# records) with bench_{one,four}.log, and fast_check.{json,md}. A failed part does not stop
# the others. DEVICE=cpu QUICK=1 runs the same parts small (the benchmark --quick, the runs
# --smoke) and without --fast (refused on a CPU), to check the script itself.
set -u
OUT="${OUT:-benchmarks/results/gpu-fast-check}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python3}"
SYNTHETIC="${SYNTHETIC:-64000}"  # 1000 iterations of batch 64 per epoch
COMMAND="OUT=$OUT DEVICE=$DEVICE SYNTHETIC=$SYNTHETIC${QUICK:+ QUICK=$QUICK} bash benchmarks/gpu_fast_check.sh"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SPEED_ARGS=(--compile off)
FAST=(--fast)
# the pseudo-teacher on from epoch 2 (the costlier step, as in 90 of a run's 240 epochs)
BENCH_DATA=(--synthetic "$SYNTHETIC" --epochs 3 --set SLKD.EVAL_FREQ 100 --set SLD.GAMMA 1)
LIMITS=(270 100 170)  # seconds for parts 1, 2a and 2b: at most 9 minutes with the rest
if [ -n "${QUICK:-}" ]; then
  SPEED_ARGS=(--quick)
  BENCH_DATA=(--smoke --set SLKD.LOADER.WORKERS 0)
  LIMITS=(900 900 900)  # a CPU shared with other jobs: the plumbing, not the time
fi
if [ "$DEVICE" != cuda ]; then FAST=(); fi
part() { echo "[gpu_fast_check] $(date +%T) $*"; }

part "machine"
"$PY" - "$OUT/machine.json" "$DEVICE" "$COMMAND" <<'EOF'
import json, os, sys
sys.path.insert(0, "benchmarks")
import torch
from speed.common import git_state
from speed.record import card_slug, cpu_model
path, device, command = sys.argv[1:]
name = torch.cuda.get_device_name(0) if device == "cuda" else cpu_model()
facts = {"device": device, "device_name": name, "card": card_slug(name, device), "command": command,
         "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
         "slkd_git": git_state(os.getcwd()), "mdistiller": os.environ.get("SLKD_MDISTILLER_PATH")}
open(path, "w").write(json.dumps(facts, indent=2) + "\n")
print(name, facts["card"], torch.__version__, torch.version.cuda)
EOF
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

part "1. sld_speed: sync (fp16 with CUDA graphs, --fast) and the 240-epoch estimate (--fast)"
timeout "${LIMITS[0]}" "$PY" benchmarks/sld_speed.py --device "$DEVICE" "${SPEED_ARGS[@]}" --only sync,epoch-estimate \
  --precisions fp32,fp16 --out "$OUT/sld_speed.json" > "$OUT/sld_speed.log" 2>&1
tail -n 14 "$OUT/sld_speed.log"

bench() {  # folder, time limit, slkd-bench options...
  local name="$1" limit="$2"; shift 2
  timeout "$limit" "$PY" -m slkd.bench.cli run --pair res32x4_res8x4 --methods SLD "${BENCH_DATA[@]}" \
    --device "$DEVICE" "${FAST[@]}" --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  tail -n 3 "$OUT/$name.log"
}
part "2a. slkd-bench --fast, one run alone"
bench bench_one "${LIMITS[1]}" --seeds 0
part "2b. slkd-bench --fast --parallel 4, four runs on one GPU"
bench bench_four "${LIMITS[2]}" --seeds 0,1,2,3 --parallel 4

part "3. the targets"
"$PY" benchmarks/speed/fast_check.py "$OUT" "$COMMAND"
part "done: $OUT"
