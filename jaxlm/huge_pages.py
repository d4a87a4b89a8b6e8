"""The commands run with glibc's malloc asking for transparent huge pages (standard library only, so a command can
call it before its heavy imports).

XLA CPU allocates each step's temporary buffer (1.7 GB for BERT-base, 52 MB for nanoGPT's shakespeare_char) with
malloc, which glibc maps and unmaps every step, so every step faults it in again 4 KiB at a time (13,000 faults a
step at shakespeare_char's size, 443,000 for BERT-base). `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` makes those 2 MiB
transparent huge pages: 12-20% faster CPU train steps, the same compiled program (benchmarks/RESULTS.md). glibc
reads the variable only at process start, so a command started without it runs itself again, once, with it set
(os.execve: the same process id and arguments).

Nothing is done when GLIBC_TUNABLES is set (even to ''), JAXLM_HUGE_PAGES=off, the libc is not glibc, the kernel's
transparent huge pages are not in `madvise` mode ('always' needs no tunable, 'never' gives nothing), or the process
is not a jaxlm command (`python -m jaxlm.X`: tests and notebooks import jaxlm and are never re-executed).
"""
import os
import sys

TUNABLES_ENV = "GLIBC_TUNABLES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT_ENV = "JAXLM_HUGE_PAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def applies(environ=os.environ) -> bool:
    """Whether a jaxlm command started in this environment would restart with huge pages."""
    if TUNABLES_ENV in environ or environ.get(OPT_OUT_ENV, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    if not sys.platform.startswith("linux") or not getattr(sys, "orig_argv", None):
        return False
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or not spec.name.startswith("jaxlm."):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        with open(THP_MODE_FILE) as f:
            return "[madvise]" in f.read()
    except (OSError, ValueError):
        return False


def restart_with_huge_pages(environ=os.environ) -> None:
    """Re-executes this command with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 where that `applies`; else returns."""
    if not applies(environ):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**environ, TUNABLES_ENV: HUGE_PAGES_TUNABLE})
