# The GPU-decode issue's measurements on one machine, in phases (one device command each; the machine stays warm):
#   bash benchmarks/gpu/issue14.sh export   # SmolLM2 artifacts: fp16 and fp32 batch 1 (+ coprocessor), fp16 batch 8, 32
#   bash benchmarks/gpu/issue14.sh check    # CUDA graphs on/off tokens, parity (fp16 CUDA vs fp32 CPU), fp32 latency
#   bash benchmarks/gpu/issue14.sh bench    # decode_bench.py: latentcache beside transformers, batch 1, 8, 32
#   bash benchmarks/gpu/issue14.sh copro    # fp16 batch 1 only (export + latentcache rows): coprocessor + absorb
#   bash benchmarks/gpu/issue14.sh ttft     # fp16 batch 1 + coprocessor: captured prompts (prefill buckets) against
#                                           # uncaptured ones and transformers, and the tokens with and without capture
#   bash benchmarks/gpu/issue14.sh parity   # fp16 and fp32 batch 1 + coprocessor, CUDA against the CPU reference
#   bash benchmarks/gpu/issue14.sh measure  # after parity: capture check and decode_bench on the fp16 artifacts
#   bash benchmarks/gpu/issue14.sh share    # fp16 base-only and + coprocessor: GPU memory with one copy of the base
#   bash benchmarks/gpu/issue14.sh llm      # --ops onnx-llm beside standard (fp16/fp32 + coprocessor): parity on CUDA
#   bash benchmarks/gpu/issue14.sh llmbench # after llm: capture check, decode_bench of both forms and transformers
#   bash benchmarks/gpu/issue14.sh kernels  # onnx-llm fp16 with ONNX Runtime's attention kernels chosen per graph,
#                                           # beside the standard form (no transformers rows)
#   bash benchmarks/gpu/issue14.sh profile  # after share and kernels: each form's decode kernels (kernel_profile.py)
# Expects setup.sh done (model in $MODEL_DIR) and onnxruntime-gpu in /tmp/ort-gpu (ort-gpu-pack.sh).
set -uo pipefail
export PYTHONPATH=/tmp/ort-gpu:/tmp/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1
MODEL_DIR=${MODEL_DIR:-/tmp/smol}
ART=${ART:-/tmp/art14}
OUT=${OUT:-/tmp/out}
COP=latentcache/defaults/smollm2-135m-instruct-lora16
mkdir -p "$ART" "$OUT"
# one NAME OPTIONS...: export SmolLM2 to $ART/NAME, the log in $OUT (run several side by side: export is mostly one
# thread each, so $THREADS each; 2304 slots hold a 2,000-token prompt, 128 new tokens and the latents)
one() { if [ -n "${REUSE:-}" ] && [ -f "$ART/$1/manifest.json" ]; then echo "$1: kept"; return; fi
        OMP_NUM_THREADS=${THREADS:-4} python3 -m latentcache.cli export --base "$MODEL_DIR" --out "$ART/$1" --force \
          "${@:2}" > "$OUT/export_$1.log" 2>&1; echo "$1: exit $?"; tail -1 "$OUT/export_$1.log"; }
# bench_fp16 SUFFIX: captured against uncaptured tokens, then decode_bench.py beside transformers, on $ART/fp16
bench_fp16() { python3 benchmarks/gpu/capture_check.py "$ART/fp16" --json "$OUT/capture_check$1.json" | tail -3
         python3 benchmarks/gpu/decode_bench.py --base "$MODEL_DIR" --artifacts 1="$ART/fp16" \
           --json "$OUT/decode_bench$1.json" 2>&1 | grep -v Warning; }
case "$1" in
export)
  one fp16 --coprocessor $COP --dtype fp16 --max-seq 2304 &
  one fp32 --coprocessor $COP --dtype fp32 --max-seq 2304 &
  one fp16b8 --dtype fp16 --batch 8 --max-seq 320 &
  one fp16b32 --dtype fp16 --batch 32 --max-seq 320 &
  wait
  du -sh "$ART"/*
  ;;
check)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
  python3 - "$ART/fp16" <<'PY' 2>&1 | tail -20
import sys, time, numpy as np
from pathlib import Path
from latentcache.contract.manifest import load_manifest
from latentcache.runtime.backends.onnxruntime import OnnxRuntimeCudaBackend
from latentcache.runtime.generator import Generator, EndOfPrompt
art = Path(sys.argv[1]); m = load_manifest(art)
prompt = [[1, 504, 3458, 282, 4649, 314, 1345, 30]]
for graphs in (True, False):
    tick = time.perf_counter()
    g = Generator(OnnxRuntimeCudaBackend(art, m, cuda_graphs=graphs))
    made = time.perf_counter() - tick
    for policy in (None, EndOfPrompt()):
        print("cuda_graphs", graphs, "made in %.2fs" % made, policy, [int(t[0]) for t in g.generate(prompt, 16, policy=policy)])
PY
  python3 benchmarks/gpu/capture_check.py "$ART/fp16" --json "$OUT/capture_check.json" | tail -3
  python3 benchmarks/ort_cuda_parity.py "$ART/fp16" --reference "$ART/fp32" --tokens 64 --json "$OUT/parity_fp16.json" | tail -4
  python3 benchmarks/ort_cuda_parity.py "$ART/fp32" --tokens 64 --json "$OUT/parity_fp32.json" | tail -4
  python3 benchmarks/gpu/decode_bench.py --base "$MODEL_DIR" --artifacts 1="$ART/fp32" --skip-transformers \
    --json "$OUT/decode_bench_fp32.json" 2>&1 | grep -v Warning
  ;;
copro)
  THREADS=16 one fp16 --coprocessor $COP --dtype fp16 --max-seq 2304
  python3 benchmarks/gpu/decode_bench.py --base "$MODEL_DIR" --artifacts 1="$ART/fp16" --contexts 128 \
    --skip-transformers --json "$OUT/decode_bench_copro.json" 2>&1 | grep -v Warning
  ;;
ttft)
  THREADS=16 one fp16 --coprocessor $COP --dtype fp16 --max-seq 2304
  bench_fp16 _buckets
  ;;
parity)
  # Stop 30's graphs (packed projections) in fp16 and fp32 with the default coprocessor, then CUDA (graphs and
  # prompt buckets on) against the CPU: fp16 CUDA against fp32 CPU, and fp32 CUDA against fp32 CPU.
  THREADS=8 one fp16 --coprocessor $COP --dtype fp16 --max-seq 2304 &
  THREADS=8 one fp32 --coprocessor $COP --dtype fp32 --max-seq 2304 &
  wait
  python3 benchmarks/ort_cuda_parity.py "$ART/fp16" --reference "$ART/fp32" --tokens 64 --json "$OUT/parity_fp16.json" | tail -4
  python3 benchmarks/ort_cuda_parity.py "$ART/fp32" --tokens 64 --json "$OUT/parity_fp32.json" | tail -4
  ;;
measure)
  bench_fp16 ""  # after `parity` (with the cache reset's times in every latentcache row)
  ;;
share)
  # One copy of the base on the GPU for every session: fp16 base-only and + coprocessor, memory with and without.
  THREADS=8 one fp16 --coprocessor $COP --dtype fp16 --max-seq 2304 &
  THREADS=8 one fp16base --dtype fp16 --max-seq 2304 &
  wait
  python3 benchmarks/gpu/shared_weights.py --base-only "$ART/fp16base" --coprocessor "$ART/fp16" \
    --json "$OUT/shared_weights.json" 2>&1 | grep -v Warning
  ;;
llm)
  THREADS=4 one fp16 --coprocessor $COP --dtype fp16 --max-seq 2304 &
  THREADS=4 one fp16llm --coprocessor $COP --dtype fp16 --max-seq 2304 --ops onnx-llm &
  THREADS=4 one fp32 --coprocessor $COP --dtype fp32 --max-seq 2304 &
  THREADS=4 one fp32llm --coprocessor $COP --dtype fp32 --max-seq 2304 --ops onnx-llm &
  wait
  python3 benchmarks/ort_cuda_parity.py "$ART/fp16llm" --reference "$ART/fp32" --tokens 64 \
    --json "$OUT/parity_fp16_llm.json" | tail -4
  python3 benchmarks/ort_cuda_parity.py "$ART/fp32llm" --tokens 64 --json "$OUT/parity_fp32_llm.json" | tail -4
  ;;
kernels)
  REUSE=1 THREADS=8 one fp16 --coprocessor $COP --dtype fp16 --max-seq 2304 &
  REUSE=1 THREADS=8 one fp16llm --coprocessor $COP --dtype fp16 --max-seq 2304 --ops onnx-llm &
  wait
  bench() { python3 benchmarks/gpu/decode_bench.py --base "$MODEL_DIR" --skip-transformers --repetitions 2 \
              --captured-only --json "$OUT/decode_bench_kernels_$1.json" "${@:2}" 2>&1 | grep -v Warning | cut -c1-330; }
  # (decode steps run on the prefill session, so "decode=math" alone leaves them on ONNX Runtime's own choice;
  # all-math is the CUDA backend's default for onnx-llm artifacts since stop 32)
  bench standard --artifacts 1="$ART/fp16"
  bench llm_decode_math --artifacts 1="$ART/fp16llm" --attention-kernels decode=math \
    --attention-kernels coprocessor=math
  bench llm_all_math --artifacts 1="$ART/fp16llm" --attention-kernels decode=math \
    --attention-kernels coprocessor=math --attention-kernels prefill=math
  ;;
profile)
  python3 benchmarks/gpu/kernel_profile.py "$ART/fp16" "$ART/fp16llm" --json "$OUT/kernel_profile.json" 2>&1 |
    grep -v Warning
  python3 benchmarks/gpu/kernel_profile.py "$ART/fp16" "$ART/fp16llm" --fixed-shapes \
    --json "$OUT/kernel_profile_fixed.json" 2>&1 | grep -v Warning
  # onnx-llm on ONNX Runtime's own kernel choice (stop 32 measured only this one at the captured shapes, twice)
  python3 benchmarks/gpu/kernel_profile.py "$ART/fp16llm" --fixed-shapes \
    --attention-kernels prefill=flash+efficient+math --json "$OUT/kernel_profile_fixed_own_choice.json" 2>&1 |
    grep -v Warning
  ;;
llmbench)
  python3 benchmarks/gpu/capture_check.py "$ART/fp16llm" --json "$OUT/capture_check_llm.json" | tail -3
  python3 benchmarks/gpu/decode_bench.py --base "$MODEL_DIR" --artifacts 1="$ART/fp16llm" --artifacts 1="$ART/fp16" \
    --json "$OUT/decode_bench_llm.json" 2>&1 | grep -v Warning
  ;;
bench)
  python3 benchmarks/gpu/decode_bench.py --base "$MODEL_DIR" --artifacts 1="$ART/fp16" --artifacts 8="$ART/fp16b8" \
    --artifacts 32="$ART/fp16b32" --json "$OUT/decode_bench.json" 2>&1 | grep -v Warning
  ;;
esac
