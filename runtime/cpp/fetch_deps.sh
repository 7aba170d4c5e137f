#!/usr/bin/env bash
# Fetch the native runtime's build dependencies into a cache folder inside the checkout (default
# third_party/), from registry packages only (which package carries which header or library is noted beside each step below):
#   ort-lib/   libonnxruntime.so.1.32.0 from the PyPI onnxruntime wheel (+ the SONAME symlinks it lacks)
#   ort-npm/   ONNX Runtime 1.29 C/C++ headers from the npm Unity package (older than the lib is fine: a newer
#              runtime serves every older API version)
#   trt/       TensorRT 10.14 headers (kernel-lens wheel, never pip-installed: it pulls torch) and the
#              TensorRT lean runtime lib 10.16 to link createInferRuntime against
#   cuda/      CUDA 13 runtime headers + libcudart, only when /usr/local/cuda is absent
#   json/      nlohmann/json headers from Debian bookworm's nlohmann-json3-dev (3.11.2), only when the
#              system has no /usr/include/nlohmann/json.hpp; downloaded with a private apt state, so no
#              system package or source list changes
# Every step is skipped when its output is already there, so a second run costs nothing.
# Usage: runtime/cpp/fetch_deps.sh [DIR]   (PIP and NPM may name the clients to use; FETCH_TRT=0 skips the
# TensorRT and CUDA parts, e.g. on a Jetson, where JetPack provides them)
set -euo pipefail
D=${1:-third_party}
PIP=$(realpath "$(command -v "${PIP:-pip}")")   # absolute: the script changes directory
NPM=$(realpath "$(command -v "${NPM:-npm}")")
ORT_VERSION=1.32.0
ORT_NPM=com.github.asus4.onnxruntime@0.4.9
KERNEL_LENS=kernel-lens==2.0.1
TRT_LEAN=tensorrt-lean-cu13-libs==10.16.1.11
CUDA_WHEELS="nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88"
mkdir -p "$D"
cd "$D"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
say() { echo "fetch_deps: $*" >&2; }

if [ ! -e ort-lib/libonnxruntime.so.$ORT_VERSION ]; then
  say "onnxruntime==$ORT_VERSION (lib)"
  "$PIP" download -q --no-deps -d "$T" "onnxruntime==$ORT_VERSION"
  mkdir -p ort-lib
  unzip -q -o -j "$T"/onnxruntime-$ORT_VERSION-*.whl "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d ort-lib
fi
ln -sf libonnxruntime.so.$ORT_VERSION ort-lib/libonnxruntime.so.1
ln -sf libonnxruntime.so.1 ort-lib/libonnxruntime.so

if [ ! -e ort-npm/include/onnxruntime_cxx_api.h ]; then
  say "$ORT_NPM (headers)"
  ( cd "$T" && "$NPM" pack -s "$ORT_NPM" >/dev/null )
  H='package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers'
  mkdir -p ort-npm
  tar xzf "$T"/com.github.asus4.onnxruntime-*.tgz -C ort-npm --strip-components=1 "$H" package/LICENSE
  rm -rf ort-npm/include && mv "ort-npm/${H#package/}" ort-npm/include && rm -rf ort-npm/Plugins
fi

FETCH_TRT=${FETCH_TRT:-1}
if [ "$FETCH_TRT" = 1 ] && [ ! -e trt/include/NvInferRuntime.h ]; then
  say "$KERNEL_LENS (TensorRT 10.14 headers)"
  "$PIP" download -q --no-deps -d "$T" "$KERNEL_LENS"
  mkdir -p trt/include
  unzip -q -o -j "$T"/kernel_lens-*.whl 'kernel_lens/include/tensorrt/*' -d trt/include
fi

if [ "$FETCH_TRT" = 1 ] && [ ! -e trt/lib/libnvinfer_lean.so.10 ]; then
  say "$TRT_LEAN (TensorRT lean runtime)"
  "$PIP" download -q --no-deps -d "$T" "$TRT_LEAN"
  mkdir -p trt/lib
  unzip -q -o -j "$T"/tensorrt_lean_cu13_libs-*.whl 'tensorrt_lean_libs/*.so*' -d trt/lib
fi
[ -e trt/lib/libnvinfer_lean.so.10 ] && ln -sf libnvinfer_lean.so.10 trt/lib/libnvinfer_lean.so

if [ "$FETCH_TRT" = 1 ] && [ ! -e /usr/local/cuda/include/cuda_runtime_api.h ] && [ ! -e cuda/nvidia/cu13/include/cuda_runtime_api.h ]; then
  say "$CUDA_WHEELS (CUDA headers, libcudart)"
  # shellcheck disable=SC2086
  "$PIP" download -q --no-deps -d "$T" $CUDA_WHEELS
  mkdir -p cuda
  for w in "$T"/nvidia_cuda_runtime-*.whl "$T"/nvidia_cuda_crt-*.whl; do unzip -q -o "$w" 'nvidia/cu13/*' -d cuda; done
  ln -sf libcudart.so.13 cuda/nvidia/cu13/lib/libcudart.so
fi
if [ ! -e /usr/include/nlohmann/json.hpp ] && [ ! -e json/include/nlohmann/json.hpp ]; then
  say "nlohmann-json3-dev (Debian bookworm)"
  URI=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  mkdir -p "$T/lists/partial" "$T/cache/archives/partial" "$T/parts"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $URI bookworm main" > "$T/list"
  APT=(-o Dir::Etc::SourceList="$T/list" -o Dir::Etc::SourceParts="$T/parts" -o Dir::State::Lists="$T/lists"
       -o Dir::Cache="$T/cache")
  apt-get -qq "${APT[@]}" update 2>/dev/null
  ( cd "$T" && apt-get -qq "${APT[@]}" download nlohmann-json3-dev 2>/dev/null )
  dpkg -x "$T"/nlohmann-json3-dev_*.deb "$T/x"
  mkdir -p json && rm -rf json/include && cp -r "$T/x/usr/include" json/include
fi
say "done: $(pwd)"
