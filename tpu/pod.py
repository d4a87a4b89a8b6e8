#!/usr/bin/env python3
"""Cloud TPU pod slices for jaxlm, driven from a workstation with gcloud: create, setup, data, run, logs,
stop, exec, status, delete (and `info`, which needs nothing).

    python tpu/pod.py info   --accelerator=v4-32
    python tpu/pod.py create --name=bert --zone=us-central2-b --accelerator=v4-32 [--spot] [--queued]
    python tpu/pod.py setup  --name=bert --zone=us-central2-b --accelerator=v4-32 --repo=https://github.com/ORG/jaxlm
    python tpu/pod.py run    --name=bert --zone=us-central2-b --accelerator=v4-32 \\
        --config=configs/pretrain/bert_base.py --workdir=gs://BUCKET/runs/bert_base_128 \\
        --data_dir=gs://BUCKET/tensorflow_datasets --tokenizer=gs://BUCKET/tokenizers/wiki30k.model
    python tpu/pod.py logs   --name=bert --zone=us-central2-b --accelerator=v4-32
    python tpu/pod.py stop   --name=bert ...      # SIGTERM on every worker: checkpoint, then exit
    python tpu/pod.py exec   --name=bert ... --worker=0 --command='python -m jaxlm.tokenizer info tok.model'
    python tpu/pod.py delete --name=bert ...

Standard library only, so it runs without jaxlm (or JAX) installed. Every gcloud command is printed before it
runs; `--dry_run` prints and runs nothing, and is the default when gcloud is not on PATH. A multi-host slice
runs the SAME command on every worker (`--worker=all`): each process calls jax.distributed.initialize(), which
on Cloud TPU finds its peers by itself, and loads only its share of every global batch.

The host arithmetic (chips per accelerator name, chips per TPU VM) and the runtime versions are documented,
with their sources and assumptions, in tpu/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

# What the TPU VM gets: a software image per generation (Cloud TPU docs, "TPU software versions", for JAX).
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5e": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
# Zones where each generation is offered (a hint for error messages and the README, not a restriction).
EXAMPLE_ZONES = {
    "v4": "us-central2-b",
    "v5e": "us-west4-a",
    "v5p": "us-east5-a",
    "v6e": "us-east5-b",
}
# Accelerator-name prefix -> generation. v5e's gcloud name is v5litepod-N; v5e-N is accepted as shorthand.
_PREFIXES = {"v4": "v4", "v5p": "v5p", "v5litepod": "v5e", "v5e": "v5e", "v6e": "v6e"}
# v5e and v6e: the slice shapes the docs list (N = chips). Single-VM up to 8 chips, then 4 chips per VM.
_LITE_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)
# v4 and v5p: N counts TensorCores (2 per chip, one JAX device per chip: megacore), 4 chips per VM.
_MAX_CORES = {"v4": 8192, "v5p": 12288}  # v4 pod: 4096 chips; v5p: largest single slice 6144 chips
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}

REMOTE_DIR = "~/jaxlm"  # where setup puts the code on every worker
LOG_FILE = "~/jaxlm-run.log"
PID_FILE = "~/jaxlm-run.pid"


@dataclasses.dataclass(frozen=True)
class Slice:
    """One TPU slice shape: what gcloud calls it and what JAX will see."""

    accelerator_type: str  # the gcloud --accelerator-type (v4-32, v5litepod-256, ...)
    generation: str  # v4 | v5e | v5p | v6e
    chips: int  # = JAX devices (v4/v5p: one device per chip, both TensorCores)
    hosts: int  # TPU VMs = workers = JAX processes
    chips_per_host: int

    @property
    def runtime_version(self) -> str:
        return RUNTIME_VERSIONS[self.generation]

    @property
    def workers(self) -> list[int]:
        return list(range(self.hosts))

    def describe(self) -> str:
        return (f"{self.accelerator_type}: TPU {self.generation}, {self.chips} chips = {self.chips} JAX devices, "
                f"{self.hosts} host(s) x {self.chips_per_host} chips, {HBM_GIB[self.generation]} GiB HBM per chip, "
                f"runtime {self.runtime_version}")


def parse_accelerator(name: str) -> Slice:
    """'v4-32' -> Slice(chips=16, hosts=4, ...). Errors list the valid names."""
    match = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", name.strip().lower())
    if not match:
        raise ValueError(f"unknown TPU accelerator type {name!r}: expected v4-N, v5p-N (N = TensorCores, a "
                         f"multiple of 8), v5litepod-N (or v5e-N) or v6e-N (N = chips in {list(_LITE_SIZES)}); "
                         "e.g. v4-32, v5p-128, v5litepod-256, v6e-64")
    prefix, n = match.group(1), int(match.group(2))
    generation = _PREFIXES[prefix]
    if generation in ("v4", "v5p"):
        if n < 8 or n % 8 or n > _MAX_CORES[generation]:
            raise ValueError(f"{name!r}: {generation}-N counts TensorCores (2 per chip) and N must be a multiple "
                             f"of 8 between 8 and {_MAX_CORES[generation]} ({generation}-8 is the smallest "
                             f"slice: 4 chips on one host)")
        chips = n // 2
        return Slice(f"{generation}-{n}", generation, chips, chips // 4, 4)
    if n not in _LITE_SIZES:
        raise ValueError(f"{name!r}: {generation} slices have {list(_LITE_SIZES)} chips")
    gcloud_name = f"v5litepod-{n}" if generation == "v5e" else f"v6e-{n}"
    if n <= 8:
        return Slice(gcloud_name, generation, n, 1, n)
    return Slice(gcloud_name, generation, n, n // 4, 4)


def suggest_mesh(slice_: Slice, batch_size: int, fsdp: int = 1, tensor: int = 1) -> dict:
    """A (data, fsdp, tensor) mesh for this slice, checked against the global batch: the batch is split over
    data x fsdp, so that product must divide it (jaxlm.pretrain raises otherwise)."""
    if slice_.chips % (fsdp * tensor):
        raise ValueError(f"{slice_.accelerator_type} has {slice_.chips} chips: not divisible by "
                         f"fsdp={fsdp} x tensor={tensor}")
    data = slice_.chips // (fsdp * tensor)
    if batch_size % (data * fsdp):
        raise ValueError(f"batch {batch_size} is not divisible by data={data} x fsdp={fsdp} on "
                         f"{slice_.accelerator_type}; use a larger batch, tensor parallelism or a smaller slice")
    return {"data": data, "fsdp": fsdp, "tensor": tensor}


# ----------------------------------------------------------------------------------------------------------
# gcloud commands. Each builder returns argv lists; nothing here runs anything.


def _location(args) -> list[str]:
    flags = []
    if args.zone:
        flags.append(f"--zone={args.zone}")
    if args.project:
        flags.append(f"--project={args.project}")
    return flags


def queued_resource_id(name: str) -> str:
    return f"{name}-qr"


def create_commands(args, slice_: Slice) -> list[list[str]]:
    """A TPU VM (`tpu-vm create`: now or fail) or a queued resource (`queued-resources create`: waits for
    capacity, the recommended way to get large or spot slices)."""
    version = args.runtime_version or slice_.runtime_version
    if args.queued:
        if args.preemptible:
            raise ValueError("--preemptible is a `tpu-vm create` flag; queued resources use --spot")
        cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", queued_resource_id(args.name),
               f"--node-id={args.name}", *_location(args), f"--accelerator-type={slice_.accelerator_type}",
               f"--runtime-version={version}"]
        if args.spot:
            cmd.append("--spot")
        if args.reserved:
            cmd.append("--reserved")
        if args.valid_until_duration:
            cmd.append(f"--valid-until-duration={args.valid_until_duration}")
        return [cmd, ["gcloud", "compute", "tpus", "queued-resources", "describe", queued_resource_id(args.name),
                      *_location(args), "--format=value(state.state)"]]
    if args.spot and args.preemptible:
        raise ValueError("choose one of --spot and --preemptible")
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *_location(args),
           f"--accelerator-type={slice_.accelerator_type}", f"--version={version}"]
    if args.spot:
        cmd.append("--spot")
    if args.preemptible:
        cmd.append("--preemptible")
    if args.reserved:
        cmd.append("--reserved")
    return [cmd]


def ssh_command(args, remote: str, worker: str = "all") -> list[str]:
    """One shell script run on `worker` ('all' or an index) of the slice."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_location(args), f"--worker={worker}",
            f"--command={remote}"]


def _script(*lines: str) -> str:
    return "; ".join(["set -euo pipefail", *[line for line in lines if line]])


def setup_commands(args, slice_: Slice) -> list[list[str]]:
    """Puts the code on every worker (git clone, or a copy of this checkout) and installs jaxlm[tpu] in a venv.

    TPU VM images ship Python 3.10; jaxlm needs 3.11+, so `uv` provides the interpreter. gcsfs lets TFDS and
    Orbax (through etils.epath) read and write gs:// paths without TensorFlow.
    """
    commands = []
    if args.source == "git":
        if not args.repo:
            raise ValueError("setup --source=git needs --repo (a git URL the workers can clone)")
        ref = shlex.quote(args.ref)
        fetch = (f"if [ -d {REMOTE_DIR}/.git ]; then git -C {REMOTE_DIR} fetch --quiet origin; "
                 f"else git clone --quiet {shlex.quote(args.repo)} {REMOTE_DIR}; fi; "
                 f"git -C {REMOTE_DIR} checkout --quiet {ref}; "
                 f"git -C {REMOTE_DIR} pull --quiet --ff-only origin {ref} || true")
    else:  # copy this checkout (tracked + untracked, not ignored files): what you see is what runs
        archive = "/tmp/jaxlm-src.tar.gz"
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commands.append(["bash", "-c", f"cd {shlex.quote(root)} && git ls-files -co --exclude-standard -z | "
                                       f"tar --null -czf {archive} -T -"])
        commands.append(["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{args.name}:jaxlm-src.tar.gz",
                         *_location(args), "--worker=all"])
        fetch = f"mkdir -p {REMOTE_DIR} && tar -xzf ~/jaxlm-src.tar.gz -C {REMOTE_DIR}"
    install = _script(
        fetch,
        f"cd {REMOTE_DIR}",
        "python3 -m pip install --user --quiet --upgrade uv",
        f"[ -x .venv/bin/python ] || ~/.local/bin/uv venv --quiet --python {args.python} .venv",
        "~/.local/bin/uv pip install --quiet --python .venv/bin/python -e '.[tpu]' gcsfs",
        # Every worker at once: each sees only its own chips until jax.distributed joins them.
        ".venv/bin/python -c 'import jax; print(jax.local_device_count(), jax.devices()[0].device_kind)'",
    )
    commands.append(ssh_command(args, install))
    return commands


def data_commands(args, slice_: Slice) -> list[list[str]]:
    """gs:// data needs nothing: TFDS reads it directly (`direct` checks it is there and prepared). `copy` puts
    it on every worker's disk; `mount` uses Cloud Storage FUSE (read-only) for tools that want a file path."""
    if not args.data_dir:
        raise ValueError("data needs --data_dir (e.g. gs://BUCKET/tensorflow_datasets)")
    if args.mode == "direct":
        python = ("import sys, tensorflow_datasets as tfds; "
                  f"b = tfds.builder({json.dumps(args.dataset)}, data_dir={json.dumps(args.data_dir)}); "
                  "ok = b.is_prepared(); print(b.info.full_name, \"prepared\" if ok else \"NOT prepared\"); "
                  "sys.exit(0 if ok else 1)")
        check = f"cd {REMOTE_DIR} && .venv/bin/python -c {shlex.quote(python)}"
        return [ssh_command(args, _script(check), worker="0")]
    if not args.data_dir.startswith("gs://"):
        raise ValueError(f"--mode={args.mode} copies or mounts a gs:// data_dir, got {args.data_dir!r}")
    name, _, version = args.dataset.partition(":")  # TFDS layout: DATA_DIR/name/config/version
    relative = name + (f"/{version}" if version else "")
    if args.mode == "copy":
        local = "~/tensorflow_datasets/" + os.path.dirname(relative)
        return [ssh_command(args, _script(
            f"mkdir -p {local}",
            f"gcloud storage cp --recursive {args.data_dir.rstrip('/')}/{relative} {local}/",
            "echo \"copied: pass --data_dir=~/tensorflow_datasets to pod.py run\""))]
    bucket = args.data_dir[len("gs://"):].split("/")[0]
    mount = _script(
        "if ! command -v gcsfuse >/dev/null; then "
        "echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt "
        "gcsfuse-$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; "
        "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | "
        "sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; "
        "sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; fi",
        f"mkdir -p ~/gcs/{bucket}",
        f"mountpoint -q ~/gcs/{bucket} || gcsfuse --implicit-dirs -o ro {bucket} ~/gcs/{bucket}",
    )
    return [ssh_command(args, mount)]


def _env_assignments(args) -> list[str]:
    env = {}
    if args.data_dir:
        env["TFDS_DATA_DIR"] = args.data_dir
    env["JAX_COMPILATION_CACHE_DIR"] = args.compilation_cache
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return [f"{k}={_quote_path(v)}" for k, v in env.items()]


def _quote_path(value: str) -> str:
    """Quotes for the remote shell but lets a leading ~/ expand there."""
    if value.startswith("~/"):
        return "~/" + shlex.quote(value[2:])
    return shlex.quote(value)


def train_command(args) -> str:
    """The one command line every worker runs."""
    argv = [".venv/bin/python", "-m", args.module, f"--config={args.config}", f"--workdir={args.workdir}",
            "--config.distributed.initialize=True"]
    if args.tokenizer:
        argv.append(f"--config.data.tokenizer={_remote_tokenizer(args.tokenizer)}")
    argv += args.overrides
    return " ".join(shlex.quote(a) for a in argv)


def _remote_tokenizer(path: str) -> str:
    """A gs:// tokenizer is copied next to the code first (sentencepiece reads local files)."""
    return f"tokenizers/{os.path.basename(path)}" if path.startswith("gs://") else path


def run_commands(args, slice_: Slice) -> list[list[str]]:
    """Starts training on all workers at once, in the background (nohup: survives the ssh session), refusing
    to start a second copy beside a live one. Output goes to ~/jaxlm-run.log on each worker."""
    if not args.config or not args.workdir:
        raise ValueError("run needs --config and --workdir")
    if slice_.hosts > 1 and not args.workdir.startswith("gs://"):
        raise ValueError(f"{slice_.accelerator_type} has {slice_.hosts} hosts: --workdir must be a gs:// path all "
                         f"of them share (checkpoints are written jointly), got {args.workdir!r}")
    copy_tokenizer = ""
    if args.tokenizer and args.tokenizer.startswith("gs://"):
        copy_tokenizer = f"mkdir -p tokenizers && gcloud storage cp {shlex.quote(args.tokenizer)} tokenizers/"
    command = train_command(args)
    launch = (f"nohup env {' '.join(_env_assignments(args))} {command} > {LOG_FILE} 2>&1 < /dev/null & "
              f"echo $! > {PID_FILE}")
    if args.foreground:
        launch = f"env {' '.join(_env_assignments(args))} {command} 2>&1 | tee {LOG_FILE}"
    script = _script(
        f"cd {REMOTE_DIR}",
        f"if [ -f {PID_FILE} ] && kill -0 $(cat {PID_FILE}) 2>/dev/null; then "
        f"echo \"jaxlm is already running on $(hostname) (pid $(cat {PID_FILE})): pod.py stop first\" >&2; "
        "exit 1; fi",
        copy_tokenizer,
        launch,
        "" if args.foreground else "echo \"started on $(hostname): pid $(cat " + PID_FILE + ")\"",
    )
    return [ssh_command(args, script)]


def logs_commands(args, slice_: Slice) -> list[list[str]]:
    follow = "-F" if args.follow else ""
    return [ssh_command(args, f"tail -n {args.lines} {follow} {LOG_FILE}".replace("  ", " "),
                        worker=args.worker)]


def stop_commands(args, slice_: Slice) -> list[list[str]]:
    """SIGTERM, as a preemption would: the loop saves a checkpoint at the next step and exits; with
    --wait, returns once every worker's process has gone."""
    script = (f"if [ -f {PID_FILE} ] && kill -0 $(cat {PID_FILE}) 2>/dev/null; then "
              f"kill -TERM $(cat {PID_FILE}); echo \"SIGTERM sent on $(hostname)\"; "
              f"else echo \"no jaxlm run on $(hostname)\"; fi")
    if args.wait:
        script += (f"; while [ -f {PID_FILE} ] && kill -0 $(cat {PID_FILE}) 2>/dev/null; do sleep 5; done; "
                   f"tail -n 5 {LOG_FILE}")
    return [ssh_command(args, script)]


def exec_commands(args, slice_: Slice) -> list[list[str]]:
    """Any command in the repository directory with the venv active, on one worker or all (tokenizer
    training, a quick `python -c 'import jax; ...'`, copying results)."""
    return [ssh_command(args, _script(f"cd {REMOTE_DIR}", "export PATH=$PWD/.venv/bin:$PATH", args.command_line),
                        worker=args.worker)]


def status_commands(args, slice_: Slice) -> list[list[str]]:
    if args.queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "describe", queued_resource_id(args.name),
                 *_location(args)]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "describe", args.name, *_location(args),
             "--format=table(name.basename(), acceleratorType, state, health, schedulingConfig)"]]


def delete_commands(args, slice_: Slice) -> list[list[str]]:
    if args.queued:  # --force deletes the TPU VM the queued resource made, too
        return [["gcloud", "compute", "tpus", "queued-resources", "delete", queued_resource_id(args.name),
                 *_location(args), "--force", "--quiet"]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_location(args), "--quiet"]]


def info_text(slice_: Slice, batch_size: int | None = None) -> str:
    lines = [slice_.describe(), f"workers: {slice_.workers[0]}..{slice_.workers[-1]} (ssh --worker=all runs on "
             f"all {slice_.hosts})", f"example zone: {EXAMPLE_ZONES[slice_.generation]}"]
    if batch_size:
        try:
            mesh = suggest_mesh(slice_, batch_size)
            lines.append(f"data-parallel mesh for batch {batch_size}: --config.mesh.data={mesh['data']} "
                         f"({batch_size // slice_.chips} sequences per chip)")
        except ValueError as e:
            lines.append(str(e))
    return "\n".join(lines)


COMMANDS = {
    "create": create_commands, "setup": setup_commands, "data": data_commands, "run": run_commands,
    "logs": logs_commands, "stop": stop_commands, "exec": exec_commands, "status": status_commands,
    "delete": delete_commands,
}


# ----------------------------------------------------------------------------------------------------------
# Command line.


def gcloud_available() -> bool:
    return shutil.which("gcloud") is not None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--accelerator", "--accelerator_type", dest="accelerator", required=True,
                        help="v4-32, v5litepod-256 (or v5e-256), v5p-128, v6e-64, ...")
    common.add_argument("--dry_run", action="store_true",
                        help="print the commands, run nothing (the default when gcloud is not installed)")
    node = argparse.ArgumentParser(add_help=False)
    node.add_argument("--name", required=True, help="TPU VM name (the queued resource is NAME-qr)")
    node.add_argument("--zone", default=os.environ.get("TPU_ZONE", ""),
                      help="e.g. us-central2-b for v4 ('' = gcloud's compute/zone; env TPU_ZONE)")
    node.add_argument("--project", default=os.environ.get("TPU_PROJECT", ""),
                      help="'' = gcloud's core/project (env TPU_PROJECT)")
    node.add_argument("--queued", action="store_true", help="the slice is (to be) a queued resource")

    parser = argparse.ArgumentParser(prog="python tpu/pod.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", parents=[common], help="slice shape, hosts and a mesh; runs nothing")
    info.add_argument("--batch_size", type=int, default=0, help="check a global batch against the slice")

    create = sub.add_parser("create", parents=[common, node], help="create the TPU VM or queued resource")
    create.add_argument("--runtime_version", default="", help="override the per-generation default")
    create.add_argument("--spot", action="store_true", help="Spot capacity (cheaper, can be preempted)")
    create.add_argument("--preemptible", action="store_true", help="legacy preemptible TPU VM")
    create.add_argument("--reserved", action="store_true", help="use a reservation")
    create.add_argument("--valid_until_duration", default="",
                        help="queued resources: give up if not provisioned within this, e.g. 6h")

    setup = sub.add_parser("setup", parents=[common, node], help="code + jaxlm[tpu] on every worker")
    setup.add_argument("--source", choices=("git", "copy"), default="git",
                       help="git: clone --repo on the workers; copy: send this checkout (scp)")
    setup.add_argument("--repo", default="", help="git URL, e.g. https://github.com/ORG/jaxlm")
    setup.add_argument("--ref", default="main", help="branch, tag or commit to check out")
    setup.add_argument("--python", default="3.11", help="Python version for the venv (uv installs it)")

    data = sub.add_parser("data", parents=[common, node], help="check, copy or mount the TFDS data")
    data.add_argument("--data_dir", required=True, help="TFDS data_dir, e.g. gs://BUCKET/tensorflow_datasets")
    data.add_argument("--dataset", default="wikipedia/20230601.en")
    data.add_argument("--mode", choices=("direct", "copy", "mount"), default="direct",
                      help="direct: read gs:// in place (check it is prepared); copy: to each worker's disk; "
                           "mount: Cloud Storage FUSE at ~/gcs/BUCKET")

    run = sub.add_parser("run", parents=[common, node], help="the same training command on every worker")
    run.add_argument("--config", required=True, help="config file, relative to the repo (file.py[:arg])")
    run.add_argument("--workdir", required=True, help="gs://BUCKET/runs/NAME (shared by all hosts)")
    run.add_argument("--module", default="jaxlm.pretrain", help="jaxlm.pretrain or jaxlm.finetune")
    run.add_argument("--data_dir", default="", help="TFDS data_dir, exported as TFDS_DATA_DIR")
    run.add_argument("--tokenizer", default="", help="sentencepiece .model (gs:// is copied to each worker)")
    run.add_argument("--compilation_cache", default="~/.cache/jaxlm-xla",
                     help="JAX_COMPILATION_CACHE_DIR: a restart skips recompiling (local or gs://)")
    run.add_argument("--env", action="append", help="extra KEY=VALUE for the training process (repeatable)")
    run.add_argument("--foreground", action="store_true", help="stay attached (ssh ends the run if it drops)")

    logs = sub.add_parser("logs", parents=[common, node], help="stream a worker's training log")
    logs.add_argument("--worker", default="0", help="worker index or 'all' (interleaved)")
    logs.add_argument("--lines", type=int, default=100)
    logs.add_argument("--no_follow", dest="follow", action="store_false")

    stop = sub.add_parser("stop", parents=[common, node], help="SIGTERM the run: checkpoint and exit")
    stop.add_argument("--wait", action="store_true", help="return once every worker's process has exited")

    exec_ = sub.add_parser("exec", parents=[common, node], help="a shell command in ~/jaxlm with the venv on")
    exec_.add_argument("--command", dest="command_line", required=True, help="e.g. 'python -m jaxlm.tokenizer ...'")
    exec_.add_argument("--worker", default="0", help="worker index or 'all'")

    sub.add_parser("status", parents=[common, node], help="describe the TPU VM / queued resource")
    sub.add_parser("delete", parents=[common, node], help="delete the TPU VM / queued resource")
    return parser


def plan(argv: list[str]) -> tuple[argparse.Namespace, Slice, list[list[str]]]:
    """Parses argv and returns the commands it would run (for tests and --dry_run)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Anything `--config.key=value` goes to the training command untouched (run only).
    args.overrides = [a for a in extra if a.startswith("--config.")] if args.command == "run" else []
    unknown = [a for a in extra if a not in args.overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    slice_ = parse_accelerator(args.accelerator)
    if args.command == "info":
        return args, slice_, []
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", args.name):
        raise ValueError(f"--name={args.name!r}: TPU names are lowercase letters, digits and hyphens, starting "
                         "with a letter")
    return args, slice_, COMMANDS[args.command](args, slice_)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, slice_, commands = plan(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "info":
        print(info_text(slice_, args.batch_size))
        return 0
    dry_run = args.dry_run or not gcloud_available()
    print(f"# {slice_.describe()}")
    if dry_run and not args.dry_run:
        print("# gcloud not found on PATH: printing the commands only (dry run)")
    for cmd in commands:
        print(shlex.join(cmd), flush=True)
        if dry_run:
            continue
        result = subprocess.run(cmd)
        if result.returncode:
            print(f"error: exit status {result.returncode} from: {shlex.join(cmd[:6])} ...", file=sys.stderr)
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
