#!/usr/bin/env bash
# Builds the software device: target/swdev/lib/{libcuda.so.1, libcuda.so, libcublasLt.so,
# libnccl.so.2, libnccl.so}, the stand-ins that cudarc loads by name when LD_LIBRARY_PATH points
# there (tests/swdev/runner.sh).
# The kernels are the host build of kernels/*.cu (gen_kernels.py); everything is compiled with
# AddressSanitizer and UBSan's alignment check, so the process must start with libasan preloaded.
# Needs g++ (C++20), python3, the CUDA headers of .venv-cuda (scripts/install-nvcc.sh) and
# cudarc's sources in the cargo registry (any cargo build has fetched them). Rebuilds only when a
# source changed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/tests/swdev"
OUT="$ROOT/target/swdev"
LIB="$OUT/lib"
GEN="$OUT/gen"
INC=$(ls -d "$ROOT"/.venv-cuda/lib/python3*/site-packages/nvidia/cu13/include 2>/dev/null | head -1)
[ -n "$INC" ] || { echo "swdev: no CUDA headers in .venv-cuda (run scripts/install-nvcc.sh)" >&2; exit 1; }
CUDARC=$(grep -A1 '^name = "cudarc"' "$ROOT/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')
SYS=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$CUDARC"/src/driver/sys/mod.rs 2>/dev/null | head -1)
[ -n "$SYS" ] || { (cd "$ROOT" && cargo fetch --locked >/dev/null); SYS=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$CUDARC"/src/driver/sys/mod.rs | head -1); }
NCCL_SYS="$(dirname "$(dirname "$(dirname "$SYS")")")/nccl/sys/mod.rs"

STAMP="$OUT/sources.sha"
SUM=$( (cat "$HERE"/*.cpp "$HERE"/*.h "$HERE"/*.py "$HERE"/build.sh "$ROOT"/kernels/* "$ROOT"/scripts/emulate-kernels/cuda_host.h "$ROOT"/scripts/emulate-kernels/mma.h; echo "$SYS") | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SUM" ] && [ -f "$LIB/libnccl.so.2" ]; then
    exit 0
fi
rm -rf "$GEN" "$LIB"
mkdir -p "$GEN" "$LIB"
python3 "$HERE/gen_kernels.py" "$ROOT/kernels" "$GEN"
python3 "$HERE/gen_stubs.py" "$SYS" "$GEN/stubs.cpp"
python3 "$HERE/gen_stubs.py" "$NCCL_SYS" "$GEN/nccl_stubs.cpp" nccl swnccl_unimplemented 30
# -ffp-contract=off: no fused multiply-adds that the kernels' _rn intrinsics forbid on the GPU.
# The emulator's directory comes first for its <mma.h> stand-in (nvcuda::wmma is cuda_host.h's).
BASE=(-std=c++20 -O2 -g -fPIC -ffp-contract=off -fvisibility=hidden -pthread)
FLAGS=("${BASE[@]}" -fsanitize=address -fsanitize=alignment -fno-sanitize-recover=all)
INCS=(-I "$ROOT/scripts/emulate-kernels" -I "$HERE" -I "$GEN" -I "$INC")
echo "swdev: compiling the software device (kernels, driver, cuBLASLt, NCCL)"
g++ "${FLAGS[@]}" "${INCS[@]}" -w -c "$GEN/kernels_host.cpp" -o "$GEN/kernels_host.o" &
g++ "${FLAGS[@]}" "${INCS[@]}" -Wall -c "$HERE/driver.cpp" -o "$GEN/driver.o"
g++ "${FLAGS[@]}" "${INCS[@]}" -Wall -c "$HERE/streams.cpp" -o "$GEN/streams.o"
# The scheduler itself is not checked: ASan there would only slow every barrier.
g++ "${BASE[@]}" -O3 "${INCS[@]}" -Wall -c "$HERE/exec.cpp" -o "$GEN/exec.o"
g++ "${FLAGS[@]}" -c "$GEN/stubs.cpp" -o "$GEN/stubs.o"
wait
g++ "${FLAGS[@]}" -shared -Wl,-soname,libcuda.so.1 -o "$LIB/libcuda.so.1" "$GEN"/{driver,streams,exec,kernels_host,stubs}.o
ln -sf libcuda.so.1 "$LIB/libcuda.so"
g++ "${FLAGS[@]}" -Wall -Wextra -shared -o "$LIB/libcublasLt.so" "$HERE/cublaslt.cpp" \
    -L"$LIB" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN' -Wl,--no-undefined \
    -Wl,--version-script=<(echo '{ global: cublasLt*; local: *; };')
# NCCL: cudarc tries libnccl.so first; libnccl.so.2 is the real library's soname.
g++ "${FLAGS[@]}" -Wall -Wextra -shared -Wl,-soname,libnccl.so.2 -o "$LIB/libnccl.so.2" "$HERE/nccl.cpp" "$HERE/nccl_net.cpp" \
    "$GEN/nccl_stubs.cpp" -L"$LIB" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN' -Wl,--no-undefined \
    -Wl,--version-script=<(echo '{ global: nccl*; local: *; };')
ln -sf libnccl.so.2 "$LIB/libnccl.so"
echo "$SUM" >"$STAMP"
echo "swdev: built $LIB"
