#!/usr/bin/env bash
# Build llama.cpp (shared libraries, llama-server, llama-bench, llama-quantize) from the
# llama-cpp-python sdist of VERSION, once: the peer that `make bench` compares Enclave against.
# llama-cpp-python is installed without its own build (CMAKE_ARGS=-DLLAMA_BUILD=OFF) and loads
# DEST/bin/libllama.so, so the Python binding and the tools run the very same build.
#
# Built for the CPU features this machine grants, not with GGML_NATIVE: -march=native follows
# CPUID, and on one machine kind CI gets, CPUID (and /proc/cpuinfo) report AMX that the virtual
# machine does not allow; llama.cpp compiled with it dies in prompt processing (SIGSEGV in
# ggml_backend_amx_mul_mat). Each x86 extension llama.cpp has an option for is turned on only if
# /proc/cpuinfo lists it AND tests/bench/cpu_probe.c runs one of its instructions (AMX after the
# kernel's arch_prctl grant). GGML_CPU_ALL_VARIANTS (runtime dispatch) would not help: its variant
# scoring reads CPUID too, so it picks the AMX variant on that machine, and it compiles 14 CPU
# backends (an hour on 2 cores).
#
# DEST is ROOT/llama.cpp-VERSION-ARCH-FEATURES: a cache shared by machine kinds never hands one the
# build of another. DEST/build-info.json records the features and CMake flags (BENCHMARKS.md
# states them); DEST/convert holds the sdist's convert_hf_to_gguf.py with its gguf-py (and
# sentencepiece in DEST/convert/site), which make the F32 GGUF the quantizations start from.
# About 10 minutes on 2 idle cores (26 on a busy machine).
#
# Usage: tests/bench/build-llama.sh VERSION ROOT          build into DEST unless it is there
#        tests/bench/build-llama.sh --dest VERSION ROOT   print DEST, build nothing
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
print_only=0
if [[ ${1:-} == --dest ]]; then print_only=1; shift; fi
version=$1 root=$2
arch=$(uname -m)

# "cpuinfo flag(s):probe:GGML option", in llama.cpp's order. GGML_AVX512 compiles with
# -mavx512f/cd/vl/dq/bw, so it needs all five.
features=(
  "sse4_2:sse4_2:SSE42" "avx:avx:AVX" "f16c:f16c:F16C" "fma:fma:FMA" "avx2:avx2:AVX2" "bmi2:bmi2:BMI2"
  "avx_vnni:avx_vnni:AVX_VNNI" "avx512f,avx512cd,avx512vl,avx512dq,avx512bw:avx512bw:AVX512"
  "avx512vbmi:avx512vbmi:AVX512_VBMI" "avx512_vnni:avx512_vnni:AVX512_VNNI" "avx512_bf16:avx512_bf16:AVX512_BF16"
  "amx_tile:amx_tile:AMX_TILE" "amx_int8:amx_int8:AMX_INT8" "amx_bf16:amx_bf16:AMX_BF16"
)

# Sets granted (GGML option names) and cmake_isa (the -D flags) for this machine.
detect() {
  granted=() cmake_isa=()
  if [[ $arch != x86_64 ]]; then
    cmake_isa=(-DGGML_NATIVE=ON)  # no x86 options apply; the compiler's own detection
    return
  fi
  local probe_dir flags entry want probe option f ok
  probe_dir=$(mktemp -d "${TMPDIR:-/tmp}/cpu-probe.XXXXXX")
  "${CC:-cc}" -O1 -o "$probe_dir/cpu_probe" "$here/cpu_probe.c"
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  cmake_isa=(-DGGML_NATIVE=OFF)
  for entry in "${features[@]}"; do
    IFS=: read -r want probe option <<< "$entry"
    ok=1
    for f in ${want//,/ }; do [[ $flags == *" $f "* ]] || ok=0; done
    # AVX-512 extensions sit on GGML_AVX512, AMX kernels on AMX_TILE and AVX-512 (ggml's own
    # variant list never has one without the other).
    case $option in
      AVX512_*) [[ " ${granted[*]-} " == *" AVX512 "* ]] || ok=0 ;;
      AMX_TILE) [[ " ${granted[*]-} " == *" AVX512 "* ]] || ok=0 ;;
      AMX_*) [[ " ${granted[*]-} " == *" AMX_TILE "* ]] || ok=0 ;;
    esac
    if ((ok)) && "$probe_dir/cpu_probe" "$probe" 2>/dev/null; then
      granted+=("$option")
      cmake_isa+=("-DGGML_$option=ON")
    else
      cmake_isa+=("-DGGML_$option=OFF")  # explicit: with GGML_NATIVE off, several default to ON
    fi
  done 2>/dev/null  # a probe killed by SIGILL makes bash print "Illegal instruction"
  rm -rf "$probe_dir"
}

detect
if [[ $arch == x86_64 ]]; then
  tag=$(IFS=-; echo "${granted[*]:-baseline}" | tr '[:upper:]' '[:lower:]')
else
  tag=native
fi
dest=$root/llama.cpp-$version-$arch-$tag
if ((print_only)); then
  echo "$dest"
  exit 0
fi
if [[ -x $dest/bin/llama-server && -x $dest/bin/llama-bench && -x $dest/bin/llama-quantize && -d $dest/convert/site && -f $dest/build-info.json ]]; then
  echo "llama.cpp from llama-cpp-python $version for ${granted[*]:-native}: cached in $dest"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/llama-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "building llama.cpp from llama-cpp-python $version (sdist from PyPI) into $dest"
echo "CPU features granted here: ${granted[*]:-none probed (not x86-64)}"
"${PYTHON:-python3}" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work" 2>&1 | { grep -v "is ignored: it is neither" || true; }
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
src=$work/llama_cpp_python-$version/vendor/llama.cpp
cmake_flags=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON "${cmake_isa[@]}"
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON)
cmake -S "$src" -B "$work/build" -G Ninja "${cmake_flags[@]}" -DCMAKE_BUILD_RPATH='$ORIGIN' > "$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" --target llama-server llama-bench llama-quantize -j "$(nproc)" \
  | awk '{ printf "\r%-100s", substr($0, 1, 100) } END { print "" }'

mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"
mkdir -p "$dest.partial/bin" "$dest.partial/convert"
cp -a "$work/build/bin/llama-server" "$work/build/bin/llama-bench" "$work/build/bin/llama-quantize" "$work"/build/bin/lib*.so* "$dest.partial/bin/"
cp -a "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py" "$dest.partial/convert/"
# The converter runs in Enclave's environment (torch, transformers); the one module it needs
# beyond those goes beside it (its requirements file's range), not into that environment.
"${PYTHON:-python3}" -m pip install --quiet --no-deps --target "$dest.partial/convert/site" "sentencepiece>=0.1.98,<0.3.0" 2>&1 | { grep -v "is ignored: it is neither" || true; }
"${PYTHON:-python3}" - "$dest.partial/build-info.json" "$version" "$arch" "${granted[*]-}" "${cmake_flags[@]}" <<'EOF'
import json, sys
out, version, arch, granted, *flags = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), arch)
json.dump({"llama_cpp_python": version, "arch": arch, "cpu": cpu, "features": granted.split(), "cmake_flags": flags,
           "native": "-DGGML_NATIVE=ON" in flags}, open(out, "w"), indent=2)
EOF
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "built $dest (llama-server, llama-bench, llama-quantize; features: ${granted[*]:-native})"
