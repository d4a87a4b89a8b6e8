"""Process set-up of the commands (jaxlm.cli, jaxlm.huge_pages): malloc's transparent huge pages by default where
the kernel's THP mode is `madvise`, a user's setting kept, tests and notebooks never re-executed."""
import os
import subprocess
import sys

import pytest

from jaxlm import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _thp_madvise() -> bool:
    try:
        with open(huge_pages.THP_MODE_FILE) as f:
            return "[madvise]" in f.read() and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (OSError, ValueError):
        return False


def _setup_report(module="jaxlm.cli", **env_changes) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.OPT_OUT_ENV)}
    env.update({"JAXLM_COMPILATION_CACHE": "off", "JAX_PLATFORMS": "cpu", **env_changes})
    proc = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(not _thp_madvise(), reason="the kernel's transparent huge pages are not in madvise mode here")
def test_a_command_started_without_glibc_tunables_runs_again_with_huge_pages():
    out = _setup_report()
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 " in out
    assert out.count("compilation cache:") == 1  # re-executed once, before anything was printed


def test_a_users_glibc_tunables_or_the_opt_out_is_kept():
    assert "GLIBC_TUNABLES= pid" in _setup_report(GLIBC_TUNABLES="")
    assert "GLIBC_TUNABLES=glibc.malloc.arena_max=2 pid" in _setup_report(GLIBC_TUNABLES="glibc.malloc.arena_max=2")
    assert "GLIBC_TUNABLES= pid" in _setup_report(JAXLM_HUGE_PAGES="off")


def test_code_imported_by_tests_or_notebooks_is_never_re_executed(monkeypatch):
    calls = []
    monkeypatch.setattr(huge_pages.os, "execve", lambda *args: calls.append(args))
    huge_pages.restart_with_huge_pages(environ={})  # __main__ here is pytest, not a jaxlm command
    assert calls == [] and not huge_pages.applies(environ={})
