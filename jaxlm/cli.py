"""Process set-up shared by the command-line entry points (pretrain, finetune, evaluate, ...): transparent huge
pages for malloc, quieter library logs, and XLA's persistent compilation cache, on by default, so a second run of
the same config (a resume, a rerun of `make demo`, an evaluation of the same shapes) loads its compiled steps
instead of compiling them again.

    JAXLM_COMPILATION_CACHE=off      no cache;   JAXLM_COMPILATION_CACHE=/path   another directory
    (JAX's own jax_compilation_cache_dir / JAX_COMPILATION_CACHE_DIR, when set, is used as it is)
    GLIBC_TUNABLES=<anything>        kept as it is (an empty value turns the huge pages off)

Huge pages: XLA CPU allocates each step's temporary buffer (1.7 GB for BERT-base) with malloc, which glibc maps
and unmaps every step, so every step faults it in again 4 KiB at a time. `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
makes those 2 MiB transparent huge pages: 12-18% faster CPU train steps, the same compiled program
(benchmarks/RESULTS.md). glibc reads the variable only at process start, so a command started without it runs
itself again, once, with it set (same process id, same arguments).
"""
import logging as py_logging
import os
import platform
import sys

import jax
from absl import logging

CACHE_ENV = "JAXLM_COMPILATION_CACHE"
TUNABLES_ENV = "GLIBC_TUNABLES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "jaxlm", "xla")

NOISY_LIBRARIES = ("orbax", "tensorstore", "grain", "tensorflow_datasets", "jax/_src")


class _LibraryInfoFilter(py_logging.Filter):
    """Drops INFO lines from checkpointing/data libraries (hundreds per run); keeps their warnings."""

    def filter(self, record):
        if record.levelno >= py_logging.WARNING:
            return True
        path = record.pathname.replace("\\", "/")
        return not any(f"/{name}/" in path for name in NOISY_LIBRARIES)


def quiet_library_logs():
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
        handler.addFilter(_LibraryInfoFilter())


def enable_compilation_cache() -> str | None:
    """Turns XLA's persistent compilation cache on (programs that took over a second to compile are kept, keyed
    by the program, the devices and the versions); returns its directory, None when turned off."""
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    value = os.environ.get(CACHE_ENV, DEFAULT_CACHE_DIR)
    if value.strip().lower() in ("", "0", "off", "false", "no"):
        return None
    directory = os.path.expanduser(value)
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory


def restart_with_huge_pages(environ=os.environ) -> bool:
    """Runs this command again (os.execve: the same process, the same arguments) with glibc's malloc asking for
    transparent huge pages, when it was started as a jaxlm command (`python -m jaxlm.X`) on glibc Linux and
    GLIBC_TUNABLES is unset. Returns False when nothing was done (tests, notebooks, a user's own GLIBC_TUNABLES,
    another libc)."""
    if TUNABLES_ENV in environ or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or not spec.name.startswith("jaxlm.") or not getattr(sys, "orig_argv", None):
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**environ, TUNABLES_ENV: HUGE_PAGES_TUNABLE})
    return True  # not reached: execve replaces the process


def setup_command() -> None:
    """What every command does first."""
    restart_with_huge_pages()
    quiet_library_logs()
    enable_compilation_cache()


if __name__ == "__main__":  # `python -m jaxlm.cli`: what a command's set-up does on this machine
    setup_command()
    print(f"{TUNABLES_ENV}={os.environ.get(TUNABLES_ENV, '')} pid={os.getpid()}")
    print(f"compilation cache: {jax.config.jax_compilation_cache_dir or 'off'}")
