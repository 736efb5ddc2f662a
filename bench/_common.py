"""Small helpers shared by the benchmarks: machine description, versions, memory probes, a seeded noise source.

Kept free of any model code so every benchmark reports its environment the same way and results from different
machines can be put side by side.
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
from importlib import metadata
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (platform.processor() is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, object]:
    import os

    info: dict[str, object] = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["cuda"] = torch.version.cuda
    return info


def package_versions(names: tuple[str, ...] = ("torch", "transformers", "peft", "opacus")) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- host memory (Linux /proc)
def _status_kib(field: str, pid: int | None = None) -> int | None:
    status = _STATUS if pid is None else Path(f"/proc/{pid}/status")
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", status.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def process_peak_rss_bytes(pid: int) -> int | None:
    """VmHWM of another process (None once it has gone, or off Linux): the peak of a child the caller launched."""
    kib = _status_kib("VmHWM", pid)
    return None if kib is None else kib * 1024


def rss_bytes() -> int | None:
    """Resident set size of this process now."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    """High-water mark of the resident set size since start or since the last `reset_peak_rss()`."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return kib * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0), so a transient peak while building the model is not counted.

    Returns False where the kernel does not allow it; the peak then also covers model construction.
    """
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a wall-clock interval covers the work it claims to time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"
