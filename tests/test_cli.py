"""Process set-up of the commands (jaxlm.cli): malloc's transparent huge pages by default, a user's setting kept."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_report(**env_changes) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update({"JAXLM_COMPILATION_CACHE": "off", "JAX_PLATFORMS": "cpu", **env_changes})
    proc = subprocess.run([sys.executable, "-m", "jaxlm.cli"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_a_command_started_without_glibc_tunables_runs_again_with_huge_pages():
    out = _setup_report()
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 " in out
    assert out.count("compilation cache:") == 1  # re-executed once, before anything was printed


def test_a_users_glibc_tunables_is_kept_even_empty():
    assert "GLIBC_TUNABLES= pid" in _setup_report(GLIBC_TUNABLES="")
    assert "GLIBC_TUNABLES=glibc.malloc.arena_max=2 pid" in _setup_report(GLIBC_TUNABLES="glibc.malloc.arena_max=2")


def test_code_imported_by_tests_or_notebooks_is_never_re_executed():
    from jaxlm import cli

    assert cli.restart_with_huge_pages(environ={}) is False  # __main__ here is pytest, not a jaxlm command
