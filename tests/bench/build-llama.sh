#!/usr/bin/env bash
# Build llama.cpp (shared libraries and llama-server) from the llama-cpp-python sdist of VERSION
# into DEST, once: the peer that `make bench` compares Enclave against. llama-cpp-python is then
# installed without its own build (CMAKE_ARGS=-DLLAMA_BUILD=OFF) and loads DEST/bin/libllama.so,
# so the Python binding and the server run the very same build. About 6 minutes on 2 cores.
# Usage: tests/bench/build-llama.sh VERSION DEST
set -euo pipefail
version=$1 dest=$2
if [[ -x $dest/bin/llama-server && -f $dest/bin/libllama.so ]]; then
  echo "llama.cpp from llama-cpp-python $version: cached in $dest"
  exit 0
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/llama-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "building llama.cpp from llama-cpp-python $version (sdist from PyPI) into $dest"
"${PYTHON:-python3}" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work" 2>&1 | { grep -v "is ignored: it is neither" || true; }
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
src=$work/llama_cpp_python-$version/vendor/llama.cpp
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DCMAKE_BUILD_RPATH='$ORIGIN' > "$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" | awk '{ printf "\r%-100s", substr($0, 1, 100) } END { print "" }'
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"
mkdir -p "$dest.partial/bin"
cp -a "$work/build/bin/llama-server" "$work"/build/bin/lib*.so* "$dest.partial/bin/"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "built $dest/bin/llama-server"
