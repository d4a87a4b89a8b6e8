"""Process set-up shared by the command-line entry points (pretrain, finetune, evaluate, ...)."""
import logging as py_logging

from absl import logging

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
