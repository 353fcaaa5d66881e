#!/usr/bin/env bash
# One lent-GPU session in one call: the GPU benchmark (compiled and eager), then the whole test suite on a
# machine where torch sees CUDA, so that every code path that picks the device by itself runs on the GPU.
# Packages the GPU image lacks travel in .gpu/ (ignored by git): .gpu/whl (wheels for its Python) and
# .gpu/site (pure-Python packages copied as they are). Logs and JSON go to $OUT (default /tmp/gpu_session).
set -u
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT" /tmp/site
if compgen -G ".gpu/whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
fi
[ -d .gpu/site ] && cp -r .gpu/site/. /tmp/site/
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/device.txt"
echo "== benchmarks/gpu.py, compiled"
timeout 240 python3 benchmarks/gpu.py --json > "$OUT/gpu_compiled.json" 2> "$OUT/gpu_compiled.err"
echo "rc=$?"; cat "$OUT/gpu_compiled.json"; tail -5 "$OUT/gpu_compiled.err"
echo "== benchmarks/gpu.py, eager"
timeout 90 python3 benchmarks/gpu.py --no-compile --json > "$OUT/gpu_eager.json" 2> "$OUT/gpu_eager.err"
echo "rc=$?"; cat "$OUT/gpu_eager.json"; tail -5 "$OUT/gpu_eager.err"
echo "== test suite on CUDA"
timeout "${SUITE_SECONDS:-270}" python3 -m pytest -q -n 16 --timeout 120 -p no:cacheprovider -rfE tests \
  > "$OUT/pytest.log" 2>&1
echo "rc=$?"
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -60
