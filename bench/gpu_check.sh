#!/usr/bin/env bash
# The prepared GPU check of issue 14 (fp16 that trains) and issue 27 (a teacher bigger than the GPU), for a CUDA
# machine; the parts are held to 200 + 180 + 90 + 150 + 30 s (10 min 50 s at most: run them in two calls on a lent GPU
# with PARTS, e.g. PARTS="offload"); one table at the end.
#
#   bash bench/gpu_check.sh            # on a CUDA GPU (any: the fp16 path is what a P100/T4 runs; bf16 is not used)
#   bash bench/gpu_check.sh --smoke    # anywhere, CPU included: the same Python parts on tiny shapes (proves the script)
#   PARTS="offload" bash bench/gpu_check.sh    # only some parts: gpu_tests training presets offload (default: all)
#
# 1. tests/test_gpu.py: the GPU-only tests (fp16 training, scaler, resume, dtype matrix, fp16-vs-fp32 gradients and
#    training quality on the device).
# 2. bench/fp16_train_check.py: the same seeded distillation in fp32 and in fp16 with REAL autocast + GradScaler, paths
#    chunked / topk / fused, 3 seeds; mean held-out perplexity within 2% (the real stories260K if ../shared/data is
#    there, else the synthetic teacher and text sampled from it).
# 3. bench/fp16_gpu_shapes.py: SmolLM2-360M -> 135M configs (random weights), B=8 x L=512, grad accum 4, fp16 preset,
#    the process held to 16 GB: peak memory, tokens/s, skipped steps per KD path.
# 4. bench/offload_cache.py (issue 27): host-to-GPU GB/s (pageable, as accelerate copies; pinned); the cache of a teacher
#    split GPU + CPU by accelerate equals the GPU-resident teacher's (ids equal, log-probs within one fp16 step), as do
#    the evaluator and the projector fit; seconds per cache pass over batch tokens with 60% of a 0.85B fp16 teacher
#    streamed from CPU memory on every pass; then bench/offload_cost.py's tables with the measured pageable rate (the
#    lent hosts have PCIe 4/5; BENCHMARKS.md's P100/T4 rows assume PCIe 3: the check is the model's form).
# Python: $PYTHON if set, else the first of python3 / .venv/bin/python whose torch sees CUDA (else .venv/bin/python).
# Outputs: every part's log and results.jsonl in $OUT (the device runner's folder) or a temporary folder.
set -u
cd "$(dirname "$0")/.."
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
else
  PY=""
  for c in python3 .venv/bin/python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then PY=$c; break; fi
  done
  [ -z "$PY" ] && { [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; }
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
DIR="${OUT:-$(mktemp -d /tmp/kd_gpu_check.XXXXXX)}"; mkdir -p "$DIR"; RES="$DIR/results.jsonl"; : > "$RES"
T0=$(date +%s); PARTS="${PARTS:-gpu_tests training presets offload}"
want() { [[ " $PARTS " == *" $1 "* ]]; }
echo "gpu_check: python $PY ($("$PY" -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "no cuda")')), smoke=$SMOKE, logs in $DIR"

part() { # name, timeout (s), command...: run one part, keep its log, record its exit status
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  timeout "$limit" "$@" > "$DIR/$name.log" 2>&1; local rc=$?
  echo "{\"part\": \"status\", \"name\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t ))}" >> "$RES"
  echo "--- $name: exit $rc in $(( $(date +%s) - t )) s (last lines of $DIR/$name.log)"; tail -n 12 "$DIR/$name.log"
}

if [ $SMOKE = 1 ]; then
  want gpu_tests && part gpu_tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py
  want training && part training 300 "$PY" bench/fp16_train_check.py --smoke --device cpu --paths chunked topk fused --json "$RES"
  want presets && part presets 300 "$PY" bench/fp16_gpu_shapes.py --smoke --json "$RES"
  OFFLOAD=(--device cpu --dims 64 1 256 --seq 8 --batches 1 2)
else
  want gpu_tests && part gpu_tests 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "not training_quality"   # part 2 runs it in full
  if "$PY" -c 'import sys; from kd_toolkit.assets import has_asset, STORIES260K; sys.exit(0 if has_asset(STORIES260K) else 1)'; then DATA=""; else DATA="--synthetic"; fi
  want training && part training 180 "$PY" bench/fp16_train_check.py --device cuda --modes fp32 autocast --paths chunked topk fused --steps 300 --seeds 1 2 3 $DATA --json "$RES"
  want presets && part presets 90 "$PY" bench/fp16_gpu_shapes.py --cap-gb 16 --json "$RES"
  OFFLOAD=(--device cuda --dims 2048 16 32000 --seq 512 --batches 1 2 4 8 16 32)
fi
if want offload; then
  part offload 150 "$PY" bench/offload_cache.py "${OFFLOAD[@]}" --json "$RES"
  PCIE=$("$PY" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]; print(next((x['results'].get('PCIe', {}).get('H2D pageable GB/s', 6.0) for x in r if x['part'] == 'offload'), 6.0))" "$RES" 2>/dev/null || echo 6.0)
  part offload_cost 30 "$PY" bench/offload_cost.py --pcie-gbs "$PCIE" --tokens 1024 4096 16384
fi

"$PY" - "$RES" "$(( $(date +%s) - T0 ))" <<'EOF'
import json, re, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
status = {r['name']: r for r in rows if r['part'] == 'status'}
out = []
log = lambda name: open(sys.argv[1].rsplit('/', 1)[0] + f'/{name}.log').read()
try: summary = [l for l in log('gpu_tests').splitlines() if re.search(r'\d+ (passed|failed|skipped|error)', l)][-1].strip('= ')
except Exception: summary = 'no pytest summary'
if 'gpu_tests' in status: out.append(('tests/test_gpu.py', '', summary, status['gpu_tests']['rc']))
for r in rows:
    if r['part'] == 'training':
        out.append(('training check', f"{r['path']} {r['mode']} seed {r.get('seed', 1)}", f"held-out ppl {r['ppl']:.3f} ({100*r['vs_fp32']:+.2f}% vs fp32), "
                    f"skipped {r['skipped']}, final scale {r['final_scale']:.0f}", status.get('training', {}).get('rc')))
    if r['part'] == 'presets':
        val = r.get('error') or (f"{r['tokens/s']:,.0f} tokens/s, peak {r['peak GB']:.2f} GB, skipped {r['skipped']}, "
                                 f"final scale {r['final loss scale']:.0f}, loss {r['last loss']:.3f}")
        out.append(('presets 360M->135M fp16', r['method'], val, status.get('presets', {}).get('rc')))
    if r['part'] == 'offload':
        for where, res in r['results'].items():
            if isinstance(res, dict) and 'cache ids equal' in res:
                val = (f"ids equal {res['cache ids equal']}, log-probs within 1 fp16 step {res['cache |dlogp| <= 1 fp16 ulp']}, "
                       f"evaluator max diff {res['evaluator max |diff| (teacher_ppl, kl, top1)']:.2g}")
                out.append(('offloaded teacher: cache', where, val, status.get('offload', {}).get('rc')))
            elif isinstance(res, dict) and 'H2D pageable GB/s' in res:
                val = ', '.join(f"{k} {v:.1f}" for k, v in res.items())
                out.append(('offloaded teacher: PCIe', '', val, status.get('offload', {}).get('rc')))
    if r['part'] == 'offload_timing' and 'fit: s per pass + ms per token' in r:
        out.append(('offloaded teacher: cache pass', f"{r['model']}, {r['placement']} {r['map']}",
                    r['fit: s per pass + ms per token'], status.get('offload', {}).get('rc')))
print(f"\n## gpu_check ({sys.argv[2]} s)\n\n| part | case | result | exit |\n|---|---|---|---|")
for p, c, v, rc in out: print(f"| {p} | {c} | {v} | {rc} |")
bad = [n for n, s in status.items() if s['rc'] != 0]
print(f"\n{'all parts exited 0' if not bad else 'FAILED: ' + ', '.join(bad)}")
sys.exit(1 if bad else 0)
EOF
