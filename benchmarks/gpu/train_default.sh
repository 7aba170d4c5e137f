# On the GPU machine after setup.sh: one LoRA coprocessor run (N_L=16) on the Gutenberg corpus, stopped
# gracefully (SIGINT -> checkpoint) after TRAIN_SECONDS, then the Table-1 evaluation and ARC.
# Expects the corpora under .devcache/shared/data (gutenberg-fiction, wikitext-2, arc).
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:${PYTHONPATH} LATENTCACHE_SHARED=$PWD/.devcache/shared
run=/tmp/run-lora16
timeout -s INT ${TRAIN_SECONDS:-420} python3 -m latentcache.cli train --base /tmp/smol --latents 16 --lora-rank 16 \
  --out $run --max-steps ${MAX_STEPS:-3000} --batch-size 8 --lr 5e-4 --warmup-steps 100 --eval-every 250 --save-every 250
mkdir -p $OUT/lora16 && cp $run/checkpoint/coprocessor.safetensors $run/checkpoint/state.json $run/metrics.jsonl $OUT/lora16/
python3 -m latentcache.cli eval --base /tmp/smol --coprocessor $run/checkpoint --json $OUT/eval_lora16.json \
  --sequences 32 --tasks arc-easy --tasks arc-challenge --limit 200
cp $OUT/eval_lora16.md $OUT/lora16/ 2>/dev/null; true
