# On the GPU machine after setup.sh and the onnxruntime-gpu parts: training-step benchmark (one pass vs loop),
# ONNX Runtime CUDA parity with the CPU backend, and runtime latency on CUDA / torch / 16-thread CPU.
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/ort-gpu:/tmp/site:${PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $OUT/gpu.txt
python3 -m latentcache.train.bench --base /tmp/smol --seq-len 1024 --points 64 --latents 16 --ahead 16 \
  --find-max-batch --json $OUT/train_bench.json
python3 -m latentcache.cli export --base /tmp/smol --out /tmp/art --max-seq 2048 --force
python3 benchmarks/ort_cuda_parity.py /tmp/art --json $OUT/ort_cuda_parity.json
for b in onnxruntime-cuda torch; do
  python3 -m latentcache.cli bench /tmp/art --backend $b --no-coprocessor --repetitions 5 --json $OUT/bench_$b.json
done
