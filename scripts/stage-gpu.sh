#!/usr/bin/env bash
# Builds here what the GPU machine runs and stages it in the git-ignored .gpu-stage/:
#   dlm-engine (release), tests/<cuda parity test binaries>, benches/kernels, gpu-check.sh,
#   torch_baseline.py.
# Then, with the device tool: carry [".gpu-stage"], command `bash .gpu-stage/gpu-check.sh`.
# Kernels must be precompiled (DLM_REQUIRE_NVCC=1): NVRTC on the GPU machine would cost start-up
# time and needs headers. Debug info is stripped so the folder stays well under the 64 MiB carry limit.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=.gpu-stage
export DLM_REQUIRE_NVCC=1

bash scripts/install-nvcc.sh
cargo build --release

# Cargo reports each built executable in its JSON messages; keep the test and bench targets.
artifacts() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kinds = m["target"]["kind"]
    if "test" in kinds or "bench" in kinds:
        print(m["target"]["name"], m["executable"])
'
}
TESTS=$(cargo test --release --no-run --message-format=json | artifacts)
BENCHES=$(cargo bench --no-run --message-format=json | artifacts)

rm -rf "$STAGE"
mkdir -p "$STAGE/tests" "$STAGE/benches"
copy() {
    cp "$1" "$2"
    strip --strip-debug "$2" 2>/dev/null || true
}
copy target/release/dlm-engine "$STAGE/dlm-engine"
# Only the CUDA parity tests need the GPU; everything else runs here.
while read -r name exe; do
    case "$name" in cuda*) copy "$exe" "$STAGE/tests/$name" ;; esac
done <<<"$TESTS"
while read -r name exe; do
    [ -n "$name" ] && copy "$exe" "$STAGE/benches/$name"
done <<<"$BENCHES"
cp scripts/gpu-check.sh scripts/torch_baseline.py "$STAGE/"

ls -la "$STAGE" "$STAGE/tests" "$STAGE/benches"
SIZE=$(du -sm "$STAGE" | cut -f1)
echo "stage-gpu: $STAGE is ${SIZE} MiB"
if [ "$SIZE" -gt 60 ]; then
    echo "stage-gpu: larger than the device tool's 64 MiB carry limit allows with margin" >&2
    exit 1
fi
