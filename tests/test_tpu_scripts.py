"""tpu/pod.py: host arithmetic per slice and the exact gcloud commands, all in dry-run (gcloud never runs)."""
import importlib.util
import os
import shlex
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POD_PY = os.path.join(ROOT, "tpu", "pod.py")


def _load_pod():
    spec = importlib.util.spec_from_file_location("pod_under_test", POD_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pod = _load_pod()


@pytest.fixture(autouse=True)
def no_gcloud(monkeypatch):
    """Nothing in these tests may reach a real gcloud, installed or not."""
    monkeypatch.setattr(pod, "gcloud_available", lambda: False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to run a command: {args}")

    monkeypatch.setattr(pod, "subprocess", types.SimpleNamespace(run=refuse))


@pytest.mark.parametrize("name, gcloud_name, chips, hosts, per_host, runtime", [
    ("v4-8", "v4-8", 4, 1, 4, "tpu-ubuntu2204-base"),
    ("v4-32", "v4-32", 16, 4, 4, "tpu-ubuntu2204-base"),
    ("v4-128", "v4-128", 64, 16, 4, "tpu-ubuntu2204-base"),
    ("v5litepod-1", "v5litepod-1", 1, 1, 1, "v2-alpha-tpuv5-lite"),
    ("v5litepod-8", "v5litepod-8", 8, 1, 8, "v2-alpha-tpuv5-lite"),
    ("v5litepod-16", "v5litepod-16", 16, 4, 4, "v2-alpha-tpuv5-lite"),
    ("v5e-256", "v5litepod-256", 256, 64, 4, "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v5p-8", 4, 1, 4, "v2-alpha-tpuv5"),
    ("v5p-128", "v5p-128", 64, 16, 4, "v2-alpha-tpuv5"),
    ("v6e-8", "v6e-8", 8, 1, 8, "v2-alpha-tpuv6e"),
    ("v6e-64", "v6e-64", 64, 16, 4, "v2-alpha-tpuv6e"),
    ("V6E-256", "v6e-256", 256, 64, 4, "v2-alpha-tpuv6e"),
])
def test_slice_arithmetic(name, gcloud_name, chips, hosts, per_host, runtime):
    s = pod.parse_accelerator(name)
    assert (s.accelerator_type, s.chips, s.hosts, s.chips_per_host, s.runtime_version) == (
        gcloud_name, chips, hosts, per_host, runtime)
    assert s.hosts * s.chips_per_host == s.chips
    assert s.workers == list(range(hosts))


@pytest.mark.parametrize("name, fragment", [
    ("v3-8", "unknown TPU accelerator type 'v3-8'"),
    ("tpu-v4-32", "unknown TPU accelerator type"),
    ("v4-30", "multiple of 8"),
    ("v4-4", "multiple of 8"),
    ("v5p-20000", "between 8 and 12288"),
    ("v5litepod-12", "[1, 4, 8, 16, 32, 64, 128, 256]"),
    ("v6e-512", "v6e slices have"),
])
def test_bad_accelerator_names_say_what_is_valid(name, fragment):
    with pytest.raises(ValueError) as e:
        pod.parse_accelerator(name)
    assert fragment in str(e.value) and repr(name.lower()) in str(e.value).lower()


def test_bad_accelerator_on_the_command_line(capsys):
    assert pod.main(["create", "--name=x", "--accelerator=v4-33"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'v4-33'") and "multiple of 8" in err


def _run_args(accelerator, *extra):
    return ["run", "--name=bert", "--zone=us-central2-b", "--project=my-proj", f"--accelerator={accelerator}",
            "--config=configs/pretrain/bert_base.py", "--workdir=gs://bkt/runs/bert_base_128",
            "--data_dir=gs://bkt/tensorflow_datasets", *extra]


def _remote(cmd):
    """The --command script of a `tpu-vm ssh` argv."""
    assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], cmd
    (script,) = [a[len("--command="):] for a in cmd if a.startswith("--command=")]
    return script


@pytest.mark.parametrize("accelerator, hosts", [("v4-32", 4), ("v5e-256", 64)])
def test_run_is_one_identical_command_on_all_workers(accelerator, hosts):
    args, slice_, commands = pod.plan(_run_args(accelerator, "--tokenizer=gs://bkt/tok/wiki30k.model",
                                                "--config.train.num_steps=20", "--config.mesh.data=-1"))
    assert slice_.hosts == hosts
    (cmd,) = commands  # one ssh, fanned out by gcloud: no per-worker variant exists
    assert cmd[5:9] == ["bert", "--zone=us-central2-b", "--project=my-proj", "--worker=all"]
    script = _remote(cmd)
    # Exactly one training command, and nothing that differs per host (JAX finds its peers on Cloud TPU).
    assert script.count("-m jaxlm.pretrain") == 1
    for per_host in ("process_id", "coordinator_address", "num_processes", "TPU_WORKER_ID", "--worker="):
        assert per_host not in script
    train = shlex.split(script.split("nohup env ", 1)[1].split(" > ", 1)[0])
    assert train == [
        "TFDS_DATA_DIR=gs://bkt/tensorflow_datasets", "JAX_COMPILATION_CACHE_DIR=~/.cache/jaxlm-xla",
        ".venv/bin/python", "-m", "jaxlm.pretrain", "--config=configs/pretrain/bert_base.py",
        "--workdir=gs://bkt/runs/bert_base_128", "--config.distributed.initialize=True",
        "--config.data.tokenizer=tokenizers/wiki30k.model", "--config.train.num_steps=20", "--config.mesh.data=-1"]
    assert "gcloud storage cp gs://bkt/tok/wiki30k.model tokenizers/" in script  # sentencepiece reads local files
    assert script.index("kill -0") < script.index("nohup")  # refuses to start beside a live run
    assert "~/jaxlm-run.log" in script and "echo $! > ~/jaxlm-run.pid" in script


def test_run_extra_env_and_foreground():
    _, _, (cmd,) = pod.plan(_run_args("v4-8", "--env=XLA_FLAGS=--xla_dump_to=/tmp/d x", "--foreground",
                                      "--compilation_cache=gs://bkt/xla-cache"))
    script = _remote(cmd)
    assert "JAX_COMPILATION_CACHE_DIR=gs://bkt/xla-cache" in script
    assert "XLA_FLAGS='--xla_dump_to=/tmp/d x'" in script
    assert "nohup" not in script and "| tee ~/jaxlm-run.log" in script


def test_multi_host_run_needs_a_shared_workdir():
    with pytest.raises(ValueError, match="v4-32 has 4 hosts: --workdir must be a gs:// path"):
        pod.plan(["run", "--name=b", "--accelerator=v4-32", "--config=c.py", "--workdir=runs/local"])
    pod.plan(["run", "--name=b", "--accelerator=v4-8", "--config=c.py", "--workdir=runs/local"])  # one host: fine


def test_unknown_flags_are_errors_not_overrides(capsys):
    with pytest.raises(SystemExit):
        pod.plan(_run_args("v4-32", "--stepz=3"))
    assert "unrecognized arguments: --stepz=3" in capsys.readouterr().err


def test_create_vm_vs_queued_resource():
    _, _, vm = pod.plan(["create", "--name=bert", "--zone=us-central2-b", "--accelerator=v4-32", "--preemptible"])
    assert vm == [["gcloud", "compute", "tpus", "tpu-vm", "create", "bert", "--zone=us-central2-b",
                   "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--preemptible"]]
    _, _, queued = pod.plan(["create", "--name=big", "--zone=us-west4-a", "--project=p", "--accelerator=v5e-256",
                             "--queued", "--spot", "--valid_until_duration=6h"])
    assert queued[0] == ["gcloud", "compute", "tpus", "queued-resources", "create", "big-qr", "--node-id=big",
                         "--zone=us-west4-a", "--project=p", "--accelerator-type=v5litepod-256",
                         "--runtime-version=v2-alpha-tpuv5-lite", "--spot", "--valid-until-duration=6h"]
    assert queued[1][:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "big-qr"]
    _, _, custom = pod.plan(["create", "--name=n", "--accelerator=v6e-64", "--runtime_version=v2-alpha-tpuv6e-x"])
    assert "--version=v2-alpha-tpuv6e-x" in custom[0]
    with pytest.raises(ValueError, match="queued resources use --spot"):
        pod.plan(["create", "--name=n", "--accelerator=v4-32", "--queued", "--preemptible"])


def test_delete_and_status_follow_the_resource_kind():
    _, _, (vm,) = pod.plan(["delete", "--name=bert", "--zone=z", "--accelerator=v4-32"])
    assert vm == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "bert", "--zone=z", "--quiet"]
    _, _, (qr,) = pod.plan(["delete", "--name=bert", "--zone=z", "--accelerator=v4-32", "--queued"])
    assert qr == ["gcloud", "compute", "tpus", "queued-resources", "delete", "bert-qr", "--zone=z", "--force",
                  "--quiet"]
    _, _, (st,) = pod.plan(["status", "--name=bert", "--accelerator=v4-32", "--queued"])
    assert st[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "bert-qr"]


def test_setup_installs_on_every_worker():
    _, _, (cmd,) = pod.plan(["setup", "--name=bert", "--accelerator=v4-32", "--repo=https://example.org/jaxlm.git",
                             "--ref=v0.1"])
    assert "--worker=all" in cmd
    script = _remote(cmd)
    assert "git clone --quiet https://example.org/jaxlm.git ~/jaxlm" in script
    assert "checkout --quiet v0.1" in script
    assert "uv venv --quiet --python 3.11 .venv" in script
    assert "uv pip install --quiet --python .venv/bin/python -e '.[tpu]' gcsfs" in script
    with pytest.raises(ValueError, match="needs --repo"):
        pod.plan(["setup", "--name=bert", "--accelerator=v4-32"])
    _, _, copy = pod.plan(["setup", "--name=bert", "--accelerator=v4-32", "--source=copy"])
    assert copy[0][:2] == ["bash", "-c"] and "git ls-files" in copy[0][2]
    assert copy[1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in copy[1]
    assert "tar -xzf ~/jaxlm-src.tar.gz -C ~/jaxlm" in _remote(copy[2])


def test_data_modes():
    base = ["data", "--name=bert", "--accelerator=v4-32", "--data_dir=gs://bkt/tfds"]
    _, _, (direct,) = pod.plan(base)
    assert "--worker=0" in direct
    check = shlex.split(_remote(direct).split("&& ", 1)[1])
    assert check[:2] == [".venv/bin/python", "-c"]
    assert 'tfds.builder("wikipedia/20230601.en", data_dir="gs://bkt/tfds")' in check[2]
    _, _, (copy,) = pod.plan(base + ["--mode=copy", "--dataset=c4/en:3.0.1"])
    assert "--worker=all" in copy
    assert "gcloud storage cp --recursive gs://bkt/tfds/c4/en/3.0.1 ~/tensorflow_datasets/c4/en/" in _remote(copy)
    _, _, (mount,) = pod.plan(base + ["--mode=mount"])
    assert "gcsfuse --implicit-dirs -o ro bkt ~/gcs/bkt" in _remote(mount)


def test_logs_and_stop():
    _, _, (logs,) = pod.plan(["logs", "--name=b", "--accelerator=v5e-256", "--worker=3"])
    assert "--worker=3" in logs and _remote(logs) == "tail -n 100 -F ~/jaxlm-run.log"
    _, _, (stop,) = pod.plan(["stop", "--name=b", "--accelerator=v5e-256", "--wait"])
    script = _remote(stop)
    assert "--worker=all" in stop and "kill -TERM $(cat ~/jaxlm-run.pid)" in script and "sleep 5" in script


def test_dry_run_is_the_default_without_gcloud(capsys):
    assert pod.main(_run_args("v4-32")) == 0  # subprocess.run would raise: nothing ran
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("# v4-32: TPU v4, 16 chips = 16 JAX devices, 4 host(s) x 4 chips, 32 GiB HBM per chip, "
                      "runtime tpu-ubuntu2204-base")
    assert out[1] == "# gcloud not found on PATH: printing the commands only (dry run)"
    assert shlex.split(out[2])[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "bert",
                                       "--zone=us-central2-b", "--project=my-proj", "--worker=all"]


def test_stdlib_only_and_info_runs_without_site_packages():
    # -S -I: no site-packages, no user paths: the script must not need jaxlm, JAX or anything installed.
    out = subprocess.run([sys.executable, "-S", "-I", POD_PY, "info", "--accelerator=v4-32", "--batch_size=256"],
                         capture_output=True, text=True, check=True).stdout
    assert "16 chips = 16 JAX devices, 4 host(s) x 4 chips" in out
    assert "--config.mesh.data=16 (16 sequences per chip)" in out


def test_suggest_mesh_checks_the_batch():
    assert pod.suggest_mesh(pod.parse_accelerator("v4-64"), 256, fsdp=4) == {"data": 8, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="batch 256 is not divisible by data=512"):
        pod.suggest_mesh(pod.parse_accelerator("v5p-1024"), 256)


def test_exec_runs_in_the_repo_with_the_venv():
    _, _, (cmd,) = pod.plan(["exec", "--name=b", "--accelerator=v4-32",
                             "--command=python -m jaxlm.tokenizer info t.model"])
    assert "--worker=0" in cmd
    assert _remote(cmd) == ("set -euo pipefail; cd ~/jaxlm; export PATH=$PWD/.venv/bin:$PATH; "
                            "python -m jaxlm.tokenizer info t.model")
