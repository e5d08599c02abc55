"""What a worker reports of its machine: the GPU's memory and utilisation where it has
one (NVML), its own CPU and memory otherwise and besides."""

from __future__ import annotations

import os

import psutil

_process = psutil.Process()


def _gpu(index: int) -> dict[str, float]:
    try:
        import pynvml  # nvidia-ml-py, part of the gpu extra
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        # CUDA_VISIBLE_DEVICES renumbers devices for CUDA, not for NVML.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", str(index)).split(",")[0]
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(visible))
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return {"gpu_memory_used_mb": memory.used / 2**20,
                "gpu_memory_total_mb": memory.total / 2**20, "gpu_utilization_pct": util.gpu}
    except Exception:  # no driver on this machine: report the CPU side only
        return {}


def sample(device: str) -> dict[str, float]:
    report: dict[str, float] = {
        "cpu_pct": _process.cpu_percent(None),
        "rss_mb": round(_process.memory_info().rss / 2**20, 1),
        "system_memory_pct": psutil.virtual_memory().percent,
    }
    if device.startswith("cuda"):
        report.update(_gpu(int(device.split(":")[1]) if ":" in device else 0))
    return report
