#!/usr/bin/env bash
# Issue 27's GPU step, prepared for a lent CUDA GPU (not yet run on one); held to 240 + 30 s. Phase B folds it into
# bench/gpu_check.sh as one more `part` (the lines are in the phase-A report):
#   1. bench/offload_cache.py --device cuda: H2D GB/s (pageable, as accelerate copies; pinned), the cache of a teacher
#      split GPU+CPU equals the GPU-resident teacher's (ids equal, log-probs within one fp16 step), and the seconds
#      per cache pass over batch tokens with 60% of a 0.85B fp16 teacher streamed from CPU RAM every pass.
#   2. bench/offload_cost.py re-run with the measured pageable H2D rate (the lent H100/H200 hosts have PCIe 5; the
#      P100/T4 rows of BENCHMARKS.md use PCIe 3: what the GPU run checks is the model's form, t = stream + compute).
#   bash bench/gpu_check_offload.sh           # on a CUDA GPU; $OUT (the device runner's folder) or a temp folder gets the logs
#   bash bench/gpu_check_offload.sh --smoke   # anywhere: the CPU path (disk offload) on tiny shapes (proves the script)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" TOKENIZERS_PARALLELISM=false
DIR="${OUT:-$(mktemp -d /tmp/kd_offload.XXXXXX)}"; mkdir -p "$DIR"; RES="$DIR/offload.jsonl"; : > "$RES"
if [ "${1:-}" = "--smoke" ]; then ARGS=(--device cpu --dims 64 1 256 --seq 8 --batches 1 2)
else ARGS=(--device cuda --dims 2048 16 32000 --seq 512 --batches 1 2 4 8 16 32); fi
timeout 240 "$PY" bench/offload_cache.py "${ARGS[@]}" --json "$RES" > "$DIR/offload.log" 2>&1
rc=$?; echo "--- offload_cache: exit $rc"; grep -v -E "Loading weights|Writing model" "$DIR/offload.log" | tail -n 45
PCIE=$("$PY" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]; print(next((x['results'].get('PCIe', {}).get('H2D pageable GB/s', 6.0) for x in r if x['part'] == 'offload'), 6.0))" "$RES" 2>/dev/null || echo 6.0)
echo "--- offload_cost with the measured pageable H2D rate: $PCIE GB/s"
timeout 30 "$PY" bench/offload_cost.py --pcie-gbs "$PCIE" --tokens 1024 4096 16384 | tail -n 45
exit $rc
