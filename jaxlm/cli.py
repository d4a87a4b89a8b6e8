"""Process set-up shared by the command-line entry points (pretrain, finetune, evaluate, ...): transparent huge
pages for malloc, quieter library logs, and XLA's persistent compilation cache, on by default, so a second run of
the same config (a resume, a rerun of `make demo`, an evaluation of the same shapes) loads its compiled steps
instead of compiling them again.

    JAXLM_COMPILATION_CACHE=off      no cache;   JAXLM_COMPILATION_CACHE=/path   another directory
    (JAX's own jax_compilation_cache_dir / JAX_COMPILATION_CACHE_DIR, when set, is used as it is)

Huge pages: see jaxlm.huge_pages (a command started without GLIBC_TUNABLES runs itself again with malloc's
transparent huge pages, 12-20% faster CPU steps; JAXLM_HUGE_PAGES=off or any GLIBC_TUNABLES keeps it as it is).
"""
import logging as py_logging
import os

import jax
from absl import logging

from jaxlm.huge_pages import TUNABLES_ENV, restart_with_huge_pages

CACHE_ENV = "JAXLM_COMPILATION_CACHE"
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


def setup_command() -> None:
    """What every command does first."""
    restart_with_huge_pages()
    quiet_library_logs()
    enable_compilation_cache()


if __name__ == "__main__":  # `python -m jaxlm.cli`: what a command's set-up does on this machine
    setup_command()
    print(f"{TUNABLES_ENV}={os.environ.get(TUNABLES_ENV, '')} pid={os.getpid()}")
    print(f"compilation cache: {jax.config.jax_compilation_cache_dir or 'off'}")
