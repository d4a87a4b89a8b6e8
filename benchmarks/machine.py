"""What every benchmark reports about the machine it ran on: the CPU model, the package versions, the CPU time this
process used and how busy the other processes kept the cores (`others`), and its Markdown table."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import resource
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def system_line(packages: tuple[str, ...]) -> str:
    """`<CPU model>, <n> cores, Python x.y; jax 0.x, ...` for the packages named."""
    versions = []
    for pkg in packages:
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} -")
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; " + ", ".join(versions)


def cpu_snapshot(include_children: bool = False) -> tuple[float, float, float]:
    """(wall s, this process's CPU s (and its children's), the whole machine's busy CPU s): two snapshots give the
    cores other processes kept busy in between."""
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if include_children else (resource.RUSAGE_SELF,)
    own = sum(getattr(resource.getrusage(w), f) for w in who for f in ("ru_utime", "ru_stime"))
    busy = float("nan")
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return time.perf_counter(), own, busy


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
