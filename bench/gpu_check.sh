#!/usr/bin/env bash
# GPU checks for a lent NVIDIA machine: the transformers engine on CUDA with the demo
# model, pinning (a worker's CUDA_VISIBLE_DEVICES leaves exactly one device), the prefix
# cache and batching on the GPU, and, when sglang imports there, the SGLang engine and
# bench/sglang_queue.py: llmos through its queue against sglang.Engine directly
# (throughput ratio, goal >= 0.95). LLMOS_BENCH_SGLANG_MODEL picks its model.
#   usage: bash bench/gpu_check.sh   (figures go to stdout and $OUT/gpu_check.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 - <<'PY' 2>&1 | tee "$OUT/gpu_check.txt"
import os, subprocess, sys, time, tempfile
from pathlib import Path

# Pinning: a child started as `llmos worker --gpu 0` would be, sees exactly one device.
probe = "import torch; print(torch.cuda.device_count(), torch.cuda.get_device_name(0))"
out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"},
                     capture_output=True, text=True, check=True).stdout.strip()
print("pinned child sees:", out)
assert out.startswith("1 "), out

from llmos_jobs.demo_model import create_demo_model
from workers.engines.base import EngineRequest, SamplingParams
from workers.engines.transformers import TransformersEngine

for size in ("tiny", "base"):
    path = create_demo_model(Path(tempfile.mkdtemp()) / size, size=size)
    engine = TransformersEngine(size, str(path)); engine.load()
    assert engine.device == "cuda", engine.device
    prefix = [10 + (7 * i) % 400 for i in range(512)]
    req = lambda tail, n=1: EngineRequest(sampling=SamplingParams(max_tokens=n), input_ids=prefix + tail)
    engine.generate([req([1, 2])])
    engine.flush_cache(); t = time.perf_counter(); engine.generate([req([3, 4])]); cold = time.perf_counter() - t
    t = time.perf_counter(); [hit] = engine.generate([req([5, 6])]); warm = time.perf_counter() - t
    print(f"{size}: prefill 514 tokens {cold*1e3:.1f} ms, with 512 cached {warm*1e3:.1f} ms "
          f"({cold/warm:.1f}x), cached_tokens={hit.cached_tokens}")
    prompts = [[10 + (i * 13 + j) % 400 for j in range(40)] for i in range(32)]
    mk = lambda p: EngineRequest(sampling=SamplingParams(max_tokens=16), input_ids=p)
    t = time.perf_counter(); alone = [engine.generate([mk(p)])[0] for p in prompts]; one = time.perf_counter() - t
    engine.flush_cache()
    t = time.perf_counter(); together = engine.generate([mk(p) for p in prompts]); batched = time.perf_counter() - t
    same = sum(a.text == b.text for a, b in zip(alone, together))
    print(f"{size}: 32 x 16 tokens one at a time {one:.2f}s, batched {batched:.2f}s ({one/batched:.1f}x), "
          f"same greedy text {same}/32, max batch {engine.stats().max_batch}")
    engine.unload()

try:
    import sglang  # noqa: F401
except Exception as exc:
    print("sglang not importable here:", type(exc).__name__, exc)
else:
    from workers.engines.sglang import SGLangEngine
    engine = SGLangEngine("base", str(path), gpu=0, mem_fraction_static=0.5); engine.load()
    first = engine.generate([req([7, 8], 8)])[0]; second = engine.generate([req([9, 10], 8)])[0]
    print(f"sglang: cached_tokens on a shared prefix {second.cached_tokens} (first {first.cached_tokens})")
    engine.unload()
PY
if python3 -c "import sglang" 2>/dev/null; then
  model="${LLMOS_BENCH_SGLANG_MODEL:-$(python3 -c 'from bench.models import model_dir; print(model_dir("base"))')}"
  python3 bench/sglang_queue.py "$model" 2>&1 | tee -a "$OUT/gpu_check.txt"
fi
