# The method-gain issue's GPU work on one machine, in phases (one device command each; the machine stays warm):
#   bash benchmarks/gpu/issue13.sh bench    # training throughput: SDPA vs FlexAttention, batch 8 and 32, one run
#   bash benchmarks/gpu/issue13.sh train    # start the gated run and the gated pause control, detached
#   bash benchmarks/gpu/issue13.sh watch S  # keep the machine held S seconds, print the runs' progress
#   bash benchmarks/gpu/issue13.sh eval     # stop both runs (SIGINT: they checkpoint), Table 1 + benchmarks
# Expects setup.sh done (model in $MODEL_DIR) and the project's data at $LATENTCACHE_SHARED/data.
set -euo pipefail
export PYTHONPATH=/tmp/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1
MODEL_DIR=${MODEL_DIR:-/tmp/smol}
RUNS=${RUNS:-/tmp/run13}
OUT=${OUT:-/tmp/out}
mkdir -p "$RUNS" "$OUT"
phase=$1
case "$phase" in
bench)
  python3 -m latentcache.train.bench --base "$MODEL_DIR" --seq-len 1024 --points 64 --latents 16 --ahead 16 \
    --variant gated --kernels sdpa,flex --batches 8,16,32 --repeats 3 --json "$OUT/train_bench.json"
  ;;
train)
  # A private copy of the tree: later device commands replace the working tree under a detached job.
  repo=/tmp/repo13; rm -rf "$repo"; mkdir -p "$repo"
  tar --exclude=./.devcache --exclude=./.git -cf - . | tar -xf - -C "$repo"
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e "$repo" 2>&1 | grep -v WARNING || true
  cd "$repo"
  # Tokenize once, so the two jobs do not race to build the corpus cache.
  python3 -c "from latentcache.train.config import TrainConfig; from latentcache.train.run import prepare_training_data, _eos_id; from latentcache.model.loading import read_model_config; prepare_training_data(TrainConfig(base='$MODEL_DIR', out='/tmp/unused'), _eos_id(read_model_config('$MODEL_DIR')))"
  # FlexAttention only where the bench ran it and found the same loss and gradients as SDPA; else SDPA.
  kernel=$(python3 -c "
import json, sys
try:
    bench = json.load(open('$OUT/train_bench.json'))
    check = bench['kernel_check']['flex']
    ran = [r for r in bench['runs'] if r['kernel'] == 'flex' and not r.get('oom')]
    fast = {r['kernel']: r['tokens_per_s'] for r in bench['runs'] if r.get('tokens_per_s') and r['batch'] == 8}
    ok = ran and check['loss_diff'] < 1e-2 and check['max_grad_diff'] <= 0.05 * check['max_grad'] and fast.get('flex', 0) > fast.get('sdpa', 0)
    print('flex' if ok else 'sdpa')
except Exception as error:
    print('sdpa'); print(error, file=sys.stderr)")
  echo "attention kernel: $kernel"
  for run in ${TRAIN_RUNS:-gated16}; do
    cfg=benchmarks/gpu/issue13-$run.yaml
    { sed "s#@MODEL@#$MODEL_DIR#; s#@OUT@#$RUNS/$run#" "$cfg"; echo "attention: $kernel"; } > "$RUNS/$run.yaml"
    setsid nohup python3 -m latentcache.cli train --config "$RUNS/$run.yaml" > "$RUNS/$run.log" 2>&1 &
    echo "$!" > "$RUNS/$run.pid"
  done
  sleep 60; tail -c 600 "$RUNS"/*.log
  ;;
watch)
  end=$((SECONDS + ${2:-540}))
  while [ $SECONDS -lt $end ]; do sleep 30; done
  for run in ${TRAIN_RUNS:-gated16}; do echo "== $run"; tail -n 3 "$RUNS/$run/metrics.jsonl" 2>/dev/null | cut -c1-400; done
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  ;;
eval)
  for run in ${TRAIN_RUNS:-gated16}; do kill -INT "$(cat "$RUNS/$run.pid")" 2>/dev/null || true; done
  coprocessors=()
  for run in ${TRAIN_RUNS:-gated16}; do
    while kill -0 "$(cat "$RUNS/$run.pid")" 2>/dev/null; do sleep 2; done
    cp "$RUNS/$run/metrics.jsonl" "$OUT/$run-metrics.jsonl"; coprocessors+=(--coprocessor "$RUNS/$run/checkpoint")
  done
  tail -n 5 "$RUNS"/*.log | cut -c1-300
  cd /tmp/repo13
  python3 -m latentcache.cli eval --base "$MODEL_DIR" "${coprocessors[@]}" --sequences ${EVAL_SEQUENCES:-64} \
    --batch-size 4 --points 16 --tasks arc-easy --tasks arc-challenge --tasks mmlu --limit ${EVAL_LIMIT:-200} \
    --json "$OUT/eval.json"
  # The trained gate (small) comes back; the full checkpoint (540 MB) cannot.
  python3 -c "from safetensors.torch import load_file, save_file; t = load_file('$RUNS/gated16/checkpoint/coprocessor.safetensors'); save_file({'latent_gate': t['latent_gate'], 'latent_scale': t['latent_scale'], 'soft_tokens': t['soft_tokens']}, '$OUT/gated16-gate.safetensors')"
  ;;
esac
