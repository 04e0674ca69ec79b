"""What machine a benchmark ran on, stated in every generated document."""

from __future__ import annotations

import os
import platform
import subprocess


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo (or platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe(device) -> dict:
    """A JSON-ready description: CPU, cores, torch threads, device (GPU name when CUDA), versions.

    Args:
        device: The torch device the benchmark ran on.
    """
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def sentence(machine: dict) -> str:
    """One line for a document: `2-core Intel(R) Xeon(R) ... (CPU only, 2 torch threads), torch 2.13`."""
    where = f"GPU {machine['gpu']}" if machine.get("gpu") else f"CPU only, {machine['torch_threads']} torch threads"
    return (f"{machine['cores']}-core {machine['cpu']} ({where}); Python {machine['python']}, "
            f"torch {machine['torch']}, transformers {machine['transformers']}; commit {machine['git_commit']}")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
