#!/usr/bin/env bash
# Regenerate every stub (Python and TypeScript) from protos/, plus the TypeScript
# of the google/rpc protos staged from the googleapis-common-protos wheel.
# Usage, after `npm ci`: tools/generate.sh [OUT_DIR]  (OUT_DIR as buf generate -o)
set -euo pipefail
out=()
if [[ $# -gt 0 ]]; then out=(-o "$(realpath -m "$1")"); fi
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
if [[ ! -x node_modules/.bin/protoc-gen-es ]]; then
  echo "tools/generate.sh: node_modules/.bin/protoc-gen-es missing: run 'npm ci' first" >&2
  exit 1
fi

# Stage exactly the three google/rpc protos the error details need; a fresh
# directory keeps the output independent of anything staged before.
rpc_dir=$(python -c 'import google.rpc.status_pb2 as m, os; print(os.path.dirname(m.__file__))')
rm -rf build/googleapis
mkdir -p build/googleapis/google/rpc
cp "$rpc_dir"/{status,error_details,code}.proto build/googleapis/google/rpc/

buf generate "${out[@]}"
buf generate build/googleapis --template buf.gen.googleapis.yaml "${out[@]}"
