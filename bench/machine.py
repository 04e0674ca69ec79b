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
        **provenance(),
    }


def sentence(machine: dict) -> str:
    """One line for a document: `2-core Intel(R) Xeon(R) ... (CPU only, 2 torch threads), torch 2.13`."""
    where = f"GPU {machine['gpu']}" if machine.get("gpu") else f"CPU only, {machine['torch_threads']} torch threads"
    return (f"{machine['cores']}-core {machine['cpu']} ({where}); Python {machine['python']}, "
            f"torch {machine['torch']}, transformers {machine['transformers']}; {tree(machine)}")


def provenance() -> dict:
    """The code a benchmark ran: `git_commit` (short hash), `git_dirty` and the changed paths.

    `git_dirty` is True when tracked files differ from the commit or untracked files that git does not
    ignore exist (so the numbers may come from code no commit holds); None when git cannot tell.
    The benchmarks' own outputs under `docs/` do not count: a run rewrites them as it goes.
    """
    commit = (_git("rev-parse", "--short", "HEAD") or "").strip()
    status = _git("status", "--porcelain", "--untracked-files=normal", "--", ".", ":(exclude)docs")
    changed = [line[3:] for line in status.splitlines() if line.strip()] if status is not None else None
    return {"git_commit": commit or "unknown", "git_dirty": None if changed is None else bool(changed),
            "git_changed": changed[:20] if changed else []}


def dirty_warning(machine: dict) -> list[str]:
    """The lines a document starts with when its run came from a dirty (or unknown) tree; none for a clean one."""
    if machine.get("git_dirty") is False:
        return []
    if machine.get("git_dirty") is None:
        return [f"> **Provenance unknown**: this run did not record whether its working tree matched commit "
                f"{machine.get('git_commit', 'unknown')}, so the numbers may come from uncommitted code.", ""]
    changed = ", ".join(f"`{p}`" for p in machine.get("git_changed", [])) or "?"
    return [f"> **Dirty tree**: this run used commit {machine['git_commit']} plus uncommitted changes ({changed}); "
            "its numbers may not be reproducible from any commit.", ""]


def sections_warning(provenance: dict[str, dict]) -> list[str]:
    """Lines for the top of a document whose parts ran separately: each part's commit, and a warning unless all were clean."""
    if not provenance:
        return []
    lines = ["Provenance: " + "; ".join(f"{name} at {tree(p)}" for name, p in provenance.items()) + ".", ""]
    if any(p.get("git_dirty") is not False for p in provenance.values()):
        lines = ["> **Not all of this document comes from a clean commit**: the parts marked DIRTY ran with uncommitted "
                 "changes, and those marked 'tree state not recorded' ran before the tree state was recorded.", ""] + lines
    return lines


def tree(machine: dict) -> str:
    """`commit abc1234 (clean tree)`, `(DIRTY tree)` or `(tree state not recorded)`."""
    dirty = machine.get("git_dirty")
    state = "clean tree" if dirty is False else ("DIRTY tree" if dirty else "tree state not recorded")
    return f"commit {machine.get('git_commit', 'unknown')} ({state})"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None
