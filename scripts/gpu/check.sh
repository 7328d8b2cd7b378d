#!/usr/bin/env bash
# The device check: runs on a GPU machine that has the CUDA toolkit (and PyTorch + transformers for
# the anchor) but no Node and no network, from the repo root there, over the bundle `pnpm gpu:pack`
# made (.gpu/bundle.tar.xz: a built checkout, Node, and the model assets).
#   build    the addon with nvcc for the GPU present
#   tests    every CUDA suite (tensor kernels, decode kernels, runner backend): counts and failures
#   greedy   generate --device cuda vs --device cpu, 64 greedy ids, for full, smallkv and h2o (their device forms)
#   runner   bench runner --device $DEVICE --dtype bf16: the ~100M model at batch 1/16/64 and prefill,
#            the ~0.45B model at batch 1 (roofline ratios)
#   anchor   HF transformers on the same checkpoint and GPU (tools/hf-anchor/anchor.py)
#   compare  ours against the anchor, and the goals, as one table (compare.mjs)
#   kv       bench kv --scenario paper (full, h2o, smallkv; generation cut to $KV_GENERATE tokens)
# Each stage has its own time limit inside one budget (default 470 s), so a slow stage never eats
# the rest; every stage's output goes to a file in OUTDIR (never only through a pipe a timeout kills).
# Usage: bash scripts/gpu/check.sh [OUTDIR]    env: BUDGET, BUNDLE, ASSETS, STAGES, KV_GENERATE, DEVICE
set -uo pipefail
T0=$(date +%s); BUDGET=${BUDGET:-470}; OUTDIR=${1:-${OUT:-/tmp/gpu-out}}; mkdir -p "$OUTDIR"; LOG=$OUTDIR/log.txt
ROOT=$PWD; BUNDLE=${BUNDLE:-$ROOT/.gpu/bundle.tar.xz}; W=${W:-/tmp/w}; M=$W/main; ASSETS=${ASSETS:-$W/shared}
STAGES=${STAGES:-"build tests greedy runner anchor compare kv"}; KV_GENERATE=${KV_GENERATE:-64}
DEVICE=${DEVICE:-cuda}  # emulator: the plumbing on a machine without a GPU (slow)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
stage() { # name limit command; output appended to $LOG
  local name=$1 want=$2; shift 2; case " $STAGES " in *" $name "*) ;; *) [ "$name" = unpack ] || return 0;; esac
  local l t; l=$(left); t=$(( want < l - 5 ? want : l - 5 ))
  if [ "$t" -lt 10 ]; then echo "== $name: skipped (budget spent)" >>"$LOG"; return; fi
  echo "== $name (limit ${t}s, at +$(( $(date +%s) - T0 ))s)" >>"$LOG"; local s; s=$(date +%s)
  timeout -k 5 "$t" bash -c "$*" >>"$LOG" 2>&1; echo "== $name: rc=$? in $(( $(date +%s) - s ))s" >>"$LOG"
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1; nvcc --version 2>&1 | tail -1; nproc
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1 | tail -1; } >"$LOG"
if [ ! -f "$M/tools/cli/dist/bin.js" ] || [ "${UNPACK:-0}" = 1 ]; then
  rm -rf "$W"; mkdir -p "$W"
  stage unpack 60 "cd $W && xz -dc '$BUNDLE' | tar -xf - && tar -xf main.tar && rm main.tar"
fi
export PATH=$W/n/bin:$PATH SMALLKV_ASSETS=$ASSETS SMALLKV_BENCH_CACHE=${SMALLKV_BENCH_CACHE:-/tmp/skv-bench} SMALLKV_CACHE=/tmp/skv-cache
VT="node node_modules/vitest/vitest.mjs run"; CLI="node $M/tools/cli/dist/bin.js"
# Only the GPU present (its sm_XY), which halves nvcc's time.
CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
stage build 150 "cd $M/packages/tensor && SMALLKV_CUDA=1 SMALLKV_CUDA_ARCHS='${CAP:-}' node scripts/build.cjs > $OUTDIR/build.txt 2>&1; rc=\$?; tail -3 $OUTDIR/build.txt; exit \$rc"
stage tests 120 "cd $M/packages/tensor && $VT test/cuda.test.ts test/device.test.ts test/device-decode.test.ts test/device-policy.test.ts -t 'CUDA|build info' --reporter=json --outputFile=$OUTDIR/tensor-tests.json > $OUTDIR/tensor-tests.txt 2>&1;
  cd $M/packages/runner && $VT test/device.test.ts -t 'on CUDA' --reporter=json --outputFile=$OUTDIR/runner-tests.json > $OUTDIR/runner-tests.txt 2>&1;
  node -e 'for (const f of process.argv.slice(1)) { let j; try { j = require(f); } catch { console.log(f, \"missing\"); continue; }
    console.log(f.split(\"/\").pop(), \"passed\", j.numPassedTests, \"failed\", j.numFailedTests, \"skipped\", j.numPendingTests);
    for (const r of j.testResults) for (const a of r.assertionResults) if (a.status === \"failed\") console.log(\"  FAILED\", a.fullName, String(a.failureMessages[0]).slice(0, 300)); }' $OUTDIR/tensor-tests.json $OUTDIR/runner-tests.json"
PROMPT='Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball.'
stage greedy 60 "cd $M && for p in full smallkv h2o; do for d in cpu $DEVICE; do $CLI generate -m stories260K -a stories260K-slm-a --policy \$p --budget 0.2 --device \$d --max-tokens 64 --greedy --json -p '$PROMPT' > $OUTDIR/greedy-\$p-\$d.json 2>$OUTDIR/greedy-\$p-\$d.err; done;
  node -e 'const [a,b]=process.argv.slice(2).map(f=>require(f)); const n=a.ids.findIndex((x,i)=>x!==b.ids[i]); console.log(\"greedy\", process.argv[1], \"cpu vs $DEVICE:\", n<0 && a.ids.length===b.ids.length ? \"identical (\"+a.ids.length+\" ids)\" : \"first difference at \"+n)' \$p $OUTDIR/greedy-\$p-cpu.json $OUTDIR/greedy-\$p-$DEVICE.json; done"
stage runner 120 "cd $M && $CLI bench runner --device $DEVICE --dtype bf16 --batches 1,16,64 --rounds 1 --out $OUTDIR/runner-100m > $OUTDIR/runner-100m.txt 2>&1; tail -7 $OUTDIR/runner-100m.txt;
  $CLI bench runner --large --device $DEVICE --dtype bf16 --batches 1 --rounds 1 --out $OUTDIR/runner-large > $OUTDIR/runner-large.txt 2>&1; tail -4 $OUTDIR/runner-large.txt"
stage anchor 110 "cd $M && python3 tools/hf-anchor/anchor.py \$SMALLKV_BENCH_CACHE/llm-100m --batches 1,16,64 --budget 95 --out $OUTDIR/anchor.json > $OUTDIR/anchor.txt 2>&1; tail -12 $OUTDIR/anchor.txt"
stage compare 15 "cd $M && node scripts/gpu/compare.mjs $OUTDIR > $OUTDIR/compare.txt 2>&1; cat $OUTDIR/compare.txt"
stage kv 300 "cd $M && $CLI bench kv --device $DEVICE --dtype bf16 --scenario paper --generate $KV_GENERATE --policies full,h2o,smallkv --out $OUTDIR/kv > $OUTDIR/kv.txt 2>&1; tail -14 $OUTDIR/kv.txt"
echo "== done at +$(( $(date +%s) - T0 ))s" >>"$LOG"; cat "$LOG"
