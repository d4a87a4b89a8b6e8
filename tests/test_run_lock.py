"""One writer per workdir (jaxlm.run_lock): a second run is refused naming the holder, a dead run's lock is taken
over, the lock is released when the run ends (also by an error), and readers need none."""
import json
import os
import socket
import subprocess
import sys

import pytest

from jaxlm import run_lock
from jaxlm.run_lock import LOCK_FILE, WorkdirLockedError, workdir_lock


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    with workdir_lock(str(tmp_path)):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(WorkdirLockedError, match=rf"being written by another run \(host .*, pid {os.getpid()}"):
            run_lock.acquire(str(tmp_path))
    assert not (tmp_path / LOCK_FILE).exists()  # released
    with pytest.raises(ValueError):
        with workdir_lock(str(tmp_path)):
            raise ValueError("the run failed")
    assert not (tmp_path / LOCK_FILE).exists()  # released by the error too


def test_a_dead_runs_lock_is_taken_over_and_a_live_one_on_another_host_is_not(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process of this host that has exited
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": "x"}))
    with workdir_lock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "taking over the lock of a run that is gone" in caplog.text
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "tpu-worker-7", "pid": pid, "started": "y"}))
    with pytest.raises(WorkdirLockedError, match="host tpu-worker-7"):
        run_lock.acquire(str(tmp_path))
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "tpu-worker-7"  # never another run's lock


def test_pretraining_refuses_a_workdir_another_run_holds(tmp_path):
    from jaxlm import pretrain
    from tests.configs.tiny import get_config

    config = get_config("gpt2")
    config.data.data_dir = str(tmp_path / "tfds")
    workdir = tmp_path / "run"
    workdir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live "run"
    try:
        (workdir / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                                     "started": "2026-12-03T06:00:00Z"}))
        with pytest.raises(WorkdirLockedError, match=f"pid {other.pid}, started 2026-12-03T06:00:00Z"):
            pretrain.run(config, str(workdir))
        assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()
    finally:
        other.kill()
        other.wait()
