#!/usr/bin/env bash
# One GPU session, end to end: benchmark + profile, kdsb trainings side by side under a time budget
# (RECIPES: the original recipe, the original recipe with Canny(10, 100) as the only change — the
# Canny ablation — and the improved recipe), test metrics at both protocols, fp16 weights of the best.
#
# Run from the repository root on the GPU machine (device tool), carrying .gpu (the kdsb data,
# alpha channel and grey duplicates losslessly dropped: tools/pack_kdsb.py) and .whl
# (albumentations and its needs for Python 3.12):
#     bash tools/gpu_session.sh            # writes everything under $OUT (default ./gpu-out)
#     MINUTES=6 RECIPES="original canny100" bash tools/gpu_session.sh   # choose budget and runs
# Smoke test on a CPU with tiny settings:
#     SMOKE=1 OUT=/tmp/gs bash tools/gpu_session.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/res"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
DATA=${DATA:-.gpu/kdsb}
MINUTES=${MINUTES:-3.5}
RECIPES=${RECIPES:-original canny100 improved}
if [ "${SMOKE:-0}" = 1 ]; then
  DATA=src/msrfnet/sample; MINUTES=0.3; SIZE=32; BENCH="--device cpu --image-size 32 --batch-size 2 --steps 1 --no-compile"
  PROBE="--device cpu --tiny --configs b2-eager --budget-s 60"
else
  SIZE=256; BENCH="--device cuda --no-compile --steps 10"
  # eager sweeps + a profile of each; compile modes only if PROBE_CONFIGS asks (they take minutes)
  PROBE="--configs ${PROBE_CONFIGS:-b64-eager,b32-eager-convT,b16-eager} --budget-s ${PROBE_BUDGET:-100} --steps 6"
fi
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/res/session.log"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
AUG=--augment
python3 -c "import albumentations" 2>>"$OUT/res/session.log" || { AUG=""; log "albumentations unavailable: improved recipe runs without augmentation"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"; nproc; } > "$OUT/res/machine.txt" 2>&1
log "machine: $(tr '\n' ' ' < "$OUT/res/machine.txt")"

log "bench"
timeout 150 python3 -m msrfnet.cli bench $BENCH --data "$DATA" --workers 6 $AUG --json > "$OUT/res/bench.json" 2> "$OUT/res/bench.log"
log "bench rc=$? $(head -c 600 "$OUT/res/bench.json")"
log "probe"  # configurations one change apart, with a kernel-level profile of each
timeout 170 python3 tools/gpu_bench_probe.py $PROBE --out "$OUT/res/probe" > "$OUT/res/probe.log" 2>&1
log "probe rc=$?"

log "cache"  # built once here, not by the two trainings at the same time
python3 -c "
from msrfnet.data import load_or_build_cache
for split in ('train', 'val', 'test'):
    load_or_build_cache('$DATA', split, $SIZE)
" >> "$OUT/res/session.log" 2>&1

common=(--data "$DATA" --image-size "$SIZE" --epochs 400 --max-minutes "$MINUTES" --workers 4 --out "$OUT/runs")
declare -A RECIPE=(
  [original]="--batch-size 8 --lr 1e-4"
  [canny100]="--batch-size 8 --lr 1e-4 --canny-high 100"
  [improved]="--batch-size 16 --lr 4e-4 --schedule cosine --canny-high 100 $AUG"
)
log "train: $RECIPES side by side, $MINUTES min each"
pids=()
for run in $RECIPES; do
  # shellcheck disable=SC2086  # the recipe is a list of flags
  python3 -m msrfnet.cli train "${common[@]}" --name "$run" ${RECIPE[$run]} > "$OUT/res/train_$run.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do wait "${pids[$i]}"; log "train ${RECIPES// /,} #$i rc=$?"; done

for run in $RECIPES; do
  [ -f "$OUT/runs/$run/best.safetensors" ] || continue
  python3 -m msrfnet.cli test --data "$DATA" --weights "$OUT/runs/$run" --out "$OUT/res/test_$run" --batch-size 16 \
    > "$OUT/res/test_$run.log" 2>&1
  log "test $run rc=$? $(tr -d '\n' < "$OUT/res/test_$run/metrics.json" 2>/dev/null | head -c 300)"
  cp "$OUT/runs/$run/history.csv" "$OUT/res/history_$run.csv" 2>/dev/null
  cp "$OUT/runs/$run/curves.png" "$OUT/res/curves_$run.png" 2>/dev/null
  cp "$OUT/runs/$run/config.yaml" "$OUT/res/config_$run.yaml" 2>/dev/null
  cp "$OUT/runs/$run/best_metrics.json" "$OUT/res/best_metrics_$run.json" 2>/dev/null
done

# fp16 weights of the better run by validation DSC, tested again as they will ship
python3 - "$OUT" "$RECIPES" <<'PY' >> "$OUT/res/session.log" 2>&1
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
best = None
for run in sys.argv[2].split():
    p = out / "runs" / run / "best_metrics.json"
    if p.exists():
        dsc = json.loads(p.read_text()).get("val/dsc", -1)
        print(run, "val/dsc", dsc)
        if best is None or dsc > best[1]:
            best = (run, dsc)
if best:
    from msrfnet.model.loading import load_model
    from msrfnet.weights.checkpoint import save_weights
    model, config, info = load_model(out / "runs" / best[0] / "best.safetensors")
    save_weights(out / "shipped.safetensors", model, config, info.get("metrics"), half=True)
    (out / "res" / "shipped_from.txt").write_text(best[0] + "\n")
    print("shipped", best)
PY
if [ -f "$OUT/shipped.safetensors" ]; then
  python3 -m msrfnet.cli test --data "$DATA" --weights "$OUT/shipped.safetensors" --out "$OUT/res/test_shipped" --batch-size 16 \
    > "$OUT/res/test_shipped.log" 2>&1
  log "test shipped rc=$? $(tr -d '\n' < "$OUT/res/test_shipped/metrics.json" 2>/dev/null | head -c 300)"
  split -b 15M -d "$OUT/shipped.safetensors" "$OUT/weights.part"
  rm "$OUT/shipped.safetensors"
fi
rm -rf "$OUT/res/test_"*/overlays/worst_0[5-8]* "$OUT/res/test_"*/overlays/best_0[5-8]*
tar -czf "$OUT/results.tar.gz" -C "$OUT" res && rm -rf "$OUT/res" "$OUT/runs"
ls -la "$OUT"
