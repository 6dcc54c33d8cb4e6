"""The environment a trace was taken in: versions, backend and device."""

import os
import platform
from functools import lru_cache
from importlib.metadata import version

import mlx.core as mx


def backend_name() -> str:
    if mx.default_device() == mx.gpu:
        if mx.metal.is_available():
            return "metal"
        if mx.cuda.is_available():
            return "cuda"
    return "cpu"


@lru_cache(maxsize=1)
def environment() -> dict:
    try:
        device = mx.device_info().get("device_name", "")
    except Exception:  # noqa: BLE001 - device_info differs per backend; a name is optional
        device = ""
    env = {
        "mlx": mx.__version__,
        "mlx-lm": version("mlx-lm"),
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "backend": backend_name(),
        "device": device or platform.processor() or platform.machine(),
    }
    if env["backend"] != "cpu":  # fp32 matmuls as TF32 (CUDA, M5-class Metal) unless it is "0"
        env["MLX_ENABLE_TF32"] = os.environ.get("MLX_ENABLE_TF32", "1")
    return env


def deterministic(env: dict) -> bool:
    """Whether the backend promises bitwise identical reruns (MLX: the CPU does)."""
    return env["backend"] == "cpu"
