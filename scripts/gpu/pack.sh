#!/usr/bin/env bash
# Packs a built checkout for a Linux x86-64 GPU machine that has the CUDA toolkit but no Node and no network:
# the Node binary and its headers (no OpenSSL headers), and the repo with a pruned node_modules (dev tools,
# other platforms' binaries, llama.cpp (the CPU anchor's, loaded only by `bench anchor`), source maps and the
# native build left out; the addon is rebuilt there with nvcc). It must stay under the device tool's 64 MiB.
# Usage, from the repo root after `pnpm install && pnpm build`:  bash scripts/gpu/pack.sh [OUT.tar.xz]
# (or `pnpm gpu:pack`). Default output: .gpu/bundle.tar.xz (.gpu/ is git-ignored). About 55 MB. It also packs the
# assets the checks need (../shared/models without gguf/, from $SHARED, default ../shared),
# since ../shared does not travel with a checkout; check.sh finds them there.
set -euo pipefail
repo=$(pwd); name=$(basename "$repo"); out=${1:-$repo/.gpu/bundle.tar.xz}
mkdir -p "$(dirname "$out")"; stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
node_bin=$(readlink -f "$(command -v node)"); node_inc=$(dirname "$node_bin")/../include/node
[ -f "$node_inc/node_api.h" ] || node_inc=/usr/include/node
mkdir -p "$stage/n/bin" "$stage/n/include"; cp "$node_bin" "$stage/n/bin/node"
(cd "$(dirname "$node_inc")" && tar -cf - --exclude='node/openssl' node) | tar -C "$stage/n/include" -xf -
P="$name/node_modules/.pnpm"
tar -C "$(dirname "$repo")" -cf "$stage/main.tar" --transform "s|^$name|main|" \
  --exclude="$name/.git" --exclude="$name/.gpu" --exclude="$name/.scratch" --exclude="$name/eval-results" --exclude="$name/bench-results" --exclude="$name/docs" \
  --exclude="$name/packages/tensor/build" --exclude="$name/packages/tensor/build-cuda" --exclude='*/.turbo' --exclude="$name/node_modules/.cache" \
  --exclude="$P/@biomejs*" --exclude="$P/@turbo*" --exclude="$P/typescript@*" --exclude="$P/prettier@*" --exclude="$P/playwright-core@*" \
  --exclude="$P/openai@*" --exclude="$P/lightningcss-linux*" --exclude="$P/@esbuild+linux*" --exclude="$P/vite@7*" --exclude="$P/vitest@*vite@7*" \
  --exclude="$P/@rollup+rollup-linux*" --exclude="$P/rollup@*" --exclude="$P/@types+node@*" --exclude="$P/fast-check@*" \
  --exclude="$P/node-llama-cpp@*" --exclude="$P/@node-llama-cpp*" --exclude='*.map' --exclude='*/bintrees/test' \
  --exclude='*/onnxruntime-node/bin/napi-v6/darwin' --exclude='*/onnxruntime-node/bin/napi-v6/win32' --exclude='*/onnxruntime-node/bin/napi-v6/linux/arm64' \
  "$name"
SHARED=${SHARED:-$repo/../shared}; mkdir -p "$stage/shared/models"
for m in "$SHARED"/models/*; do [ "$(basename "$m")" = gguf ] || cp -r "$m" "$stage/shared/models/"; done
(cd "$stage" && tar -cf - n shared main.tar | xz -T0 -9 > "$out")
echo "$out $(du -h "$out" | cut -f1)"
[ "$(stat -c %s "$out")" -lt $((64 * 1024 * 1024)) ] || { echo "pack: the bundle is over 64 MiB (what a device run can carry)" >&2; exit 1; }
