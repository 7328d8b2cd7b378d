#!/usr/bin/env bash
# Runs on the GPU machine, from the repo root there, over a bundle made by pack.sh:
# unpack, rebuild the addon with nvcc, CUDA test suites, greedy ids cuda vs cpu, then benches.
# Every stage has its own time limit and the whole run a budget, so a slow stage never eats the rest;
# each stage's output goes to a file in the output folder (never only through a pipe that a timeout kills).
# Usage (on the GPU machine, repo root, bundle in .gpu/): pnpm gpu:check [OUTDIR], or bash scripts/gpu/check.sh [OUTDIR] where there is no pnpm   env: BUDGET (s, default 480), BUNDLE (.gpu/bundle.tar.xz),
#        ASSETS (default: the shared/ that pack.sh put in the bundle), STAGES (names).
set -uo pipefail
T0=$(date +%s); BUDGET=${BUDGET:-480}; OUTDIR=${1:-${OUT:-/tmp/gpu-out}}; mkdir -p "$OUTDIR"; LOG=$OUTDIR/log.txt
ROOT=$PWD; BUNDLE=${BUNDLE:-$ROOT/.gpu/bundle.tar.xz}; ASSETS=${ASSETS:-/tmp/w/shared}
STAGES=${STAGES:-"build tests greedy runner kv"}
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
stage() { # name limit command; output appended to $LOG
  local name=$1 want=$2; shift 2; case " $STAGES " in *" $name "*) ;; *) [ "$name" = unpack ] || return 0;; esac
  local l t; l=$(left); t=$(( want < l - 5 ? want : l - 5 ))
  if [ "$t" -lt 10 ]; then echo "== $name: skipped (budget spent)" >>"$LOG"; return; fi
  echo "== $name (limit ${t}s, at +$(( $(date +%s) - T0 ))s)" >>"$LOG"; local s; s=$(date +%s)
  timeout -k 5 "$t" bash -c "$*" >>"$LOG" 2>&1; echo "== $name: rc=$? in $(( $(date +%s) - s ))s" >>"$LOG"
}
W=/tmp/w; M=$W/main
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nvcc --version | tail -1; nproc; } >"$LOG" 2>&1
[ -x $M/packages/tensor/build/Release/smallkv_cuda.node ] || { rm -rf $W; mkdir -p $W;
  stage unpack 60 "cd $W && xz -dc '$BUNDLE' | tar -xf - && tar -xf main.tar && rm main.tar"; }
export PATH=$W/n/bin:$PATH SMALLKV_ASSETS=$ASSETS SMALLKV_BENCH_CACHE=/tmp/skv-bench SMALLKV_CACHE=/tmp/skv-cache MAKEFLAGS=-j16
VT="node node_modules/vitest/vitest.mjs run"; CLI="node $M/tools/cli/dist/bin.js"
stage build 180 "cd $M/packages/tensor && SMALLKV_CUDA=1 node scripts/build.cjs > $OUTDIR/build.txt 2>&1; tail -3 $OUTDIR/build.txt"
stage tests 240 "cd $M/packages/tensor && $VT test/cuda.test.ts test/device.test.ts -t 'CUDA|build info|EOOM' --reporter=json --outputFile=$OUTDIR/tensor-tests.json > /dev/null 2>&1;
  cd $M/packages/runner && $VT test/device.test.ts -t 'on CUDA' --reporter=json --outputFile=$OUTDIR/runner-tests.json > /dev/null 2>&1;
  node -e 'for (const f of process.argv.slice(1)) { const j = require(f); console.log(f.split(\"/\").pop(), \"passed\", j.numPassedTests, \"failed\", j.numFailedTests, \"skipped\", j.numPendingTests);
    for (const r of j.testResults) for (const a of r.assertionResults) if (a.status === \"failed\") console.log(\"  FAILED\", a.fullName, String(a.failureMessages[0]).slice(0, 300)); }' $OUTDIR/tensor-tests.json $OUTDIR/runner-tests.json"
stage greedy 60 "cd $M && for d in cpu cuda; do $CLI generate -m stories260K -a stories260K-slm-a --policy smallkv --budget 0.2 --device \$d --max-tokens 64 --greedy --json \
  -p 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball.' > /tmp/g-\$d.json; done;
  node -e 'const [a,b]=process.argv.slice(1).map(f=>require(f)); const n=a.ids.findIndex((x,i)=>x!==b.ids[i]); console.log(\"greedy cpu vs cuda:\", n<0?\"identical\":\"first difference at \"+n, \"tpot ms cpu/cuda\", a.timings.time_per_output_token_s*1e3, b.timings.time_per_output_token_s*1e3)' /tmp/g-cpu.json /tmp/g-cuda.json"
stage runner 120 "cd $M && $CLI bench runner --device cuda --dtype bf16 --batches 1,16,64 --rounds 1 --out /tmp/br > $OUTDIR/runner.txt 2>&1; cp /tmp/br/runner.json $OUTDIR/ 2>/dev/null; tail -8 $OUTDIR/runner.txt"
stage kv 200 "cd $M && $CLI bench kv --device cuda --dtype bf16 --policies full,h2o,smallkv --batches 16 --contexts 2048 --generate 32 --out /tmp/bk > $OUTDIR/kv.txt 2>&1; cp /tmp/bk/bench.json $OUTDIR/kv.json 2>/dev/null; tail -8 $OUTDIR/kv.txt"
echo "== done at +$(( $(date +%s) - T0 ))s" >>"$LOG"; cat "$LOG"
