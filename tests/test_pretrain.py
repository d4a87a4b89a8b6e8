"""The pretraining command end to end: loss falls, exact resume after SIGKILL, two-process runs, bad keys."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxlm.workdir import read_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


def pretrain_cmd(workdir, data_dir, config=TINY + ":gpt2", *overrides):
    return [sys.executable, "-m", "jaxlm.pretrain", f"--config={config}", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", *overrides]


def env_with_devices(n):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run(cmd, devices=8, timeout=600):
    proc = subprocess.run(cmd, cwd=ROOT, env=env_with_devices(devices), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def train_losses(workdir):
    """step -> train loss, read by the project's own metrics reader."""
    from jaxlm.train.metrics import loss_history, read_metrics

    return dict(zip(*loss_history(read_metrics(str(workdir)), "train")))


def final_params(workdir):
    """The latest checkpoint's step and params, read onto one device whatever mesh wrote them."""
    state = read_state(str(workdir))
    return int(state["step"]), jax.tree.map(np.asarray, state["params"])


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    from jaxlm import data

    data_dir = tmp_path_factory.mktemp("tfds")
    source = data.load_data_source(data.prepare_pydoc(str(data_dir)).name, "train", str(data_dir))
    texts = (bytes(source[i]["text"]).decode() for i in range(len(source)))
    prefix = str(tmp_path_factory.mktemp("tok") / "sp")
    data.train_tokenizer(texts, prefix, 500)
    return str(data_dir), prefix + ".model"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "xlnet"])
def test_exact_resume_after_sigkill_with_packing(tmp_path, tokenizer_file, family):
    """2N steps in one run == N steps, SIGKILL, resume: same per-step losses, bitwise-equal params (CLM packing;
    XLNet's permutation LM with its memory carried across steps, saved with the state)."""
    data_dir, tok = tokenizer_file
    common = (f"--config.data.tokenizer={tok}", "--config.train.num_steps=30", "--config.train.checkpoint_every=5")
    straight = tmp_path / "straight"
    run(pretrain_cmd(straight, data_dir, f"{TINY}:{family}", *common))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(pretrain_cmd(killed, data_dir, f"{TINY}:{family}", *common), cwd=ROOT,
                            env=env_with_devices(8), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ckpt_dir = killed / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        committed = [d for d in (os.listdir(ckpt_dir) if ckpt_dir.exists() else []) if d.isdigit()]
        if committed:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; raise num_steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_losses = train_losses(killed)
    assert max(interrupted_losses) < 30
    run(pretrain_cmd(killed, data_dir, f"{TINY}:{family}", *common))

    expected, resumed = train_losses(straight), train_losses(killed)
    assert sorted(expected) == list(range(1, 31)) and sorted(resumed) == list(range(1, 31))
    for step in range(1, 31):
        assert resumed[step] == expected[step], f"step {step}: {resumed[step]} != {expected[step]}"
    step_a, params_a = final_params(straight)
    step_b, params_b = final_params(killed)
    assert step_a == step_b == 30
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    assert expected[30] < expected[1]
    if family == "xlnet":  # the memory is part of the state: the resumed run carried the same one
        memory = [np.asarray(read_state(str(w))["memory"]) for w in (straight, killed)]
        assert memory[0].shape == (2, 16, 8, 32) and np.abs(memory[0]).mean() > 0
        np.testing.assert_array_equal(*memory)


def _train_lines(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"split": "train"' in line for line in path.read_text().splitlines())


def _saving(checkpoints):
    """True while Orbax writes a step (its tmp directory exists)."""
    try:
        return any(".orbax-checkpoint-tmp" in name for name in os.listdir(checkpoints))
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_fault_injection_sigkills_and_a_ctrl_c_resume_to_the_uninterrupted_run_bitwise(tmp_path, tokenizer_file):
    """Five SIGKILLs at seeded moments (one while an async save is in flight) and one Ctrl-C, each followed by a
    resume: the per-step losses and the final parameters equal an uninterrupted run's bitwise."""
    data_dir, tok = tokenizer_file
    common = (f"--config.data.tokenizer={tok}", "--config.train.num_steps=40", "--config.train.checkpoint_every=4")
    straight = tmp_path / "straight"
    run(pretrain_cmd(straight, data_dir, TINY + ":gpt2", *common))

    rng = np.random.default_rng(20261203)
    faults = [("SIGKILL", int(d)) for d in rng.integers(2, 9, size=4)] + [("SIGKILL", "save"), ("SIGINT", 5)]
    faults = [faults[i] for i in rng.permutation(len(faults))]
    faulty, survived, during_save = tmp_path / "faulty", [], 0
    checkpoints = faulty / "checkpoints"
    for signame, when in faults:
        logged_before = _train_lines(faulty)
        proc = subprocess.Popen(pretrain_cmd(faulty, data_dir, TINY + ":gpt2", *common), cwd=ROOT,
                                env=env_with_devices(8), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            due = _saving(checkpoints) if when == "save" else _train_lines(faulty) - logged_before >= when
            if due:
                break
            time.sleep(0.001 if when == "save" else 0.02)
        if proc.poll() is not None:  # it finished first: the remaining faults cannot happen
            break
        during_save += when == "save" and _saving(checkpoints)
        proc.send_signal(getattr(signal, signame))
        _, stderr = proc.communicate(timeout=300)
        expected_rc = 0 if signame == "SIGINT" else -signal.SIGKILL
        assert proc.returncode == expected_rc, f"{signame} at {when}: rc {proc.returncode}\n{stderr[-3000:]}"
        survived.append((signame, when))
    run(pretrain_cmd(faulty, data_dir, TINY + ":gpt2", *common))
    print(f"faults survived: {len(survived)} ({survived}); SIGKILLs during an async save: {during_save}")
    assert len(survived) == len(faults) and during_save == 1

    expected, resumed = train_losses(straight), train_losses(faulty)
    assert sorted(resumed) == list(range(1, 41))
    assert all(resumed[step] == expected[step] for step in expected), "a resumed step's loss differs"
    (step_a, params_a), (step_b, params_b) = final_params(straight), final_params(faulty)
    assert step_a == step_b == 40
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


@pytest.mark.slow
def test_commands_keep_compiled_steps_in_a_persistent_cache(tmp_path, tokenizer_file):
    """On by default (~/.cache/jaxlm/xla; JAXLM_COMPILATION_CACHE names another directory, `off` turns it off):
    the second run of a config compiles nothing new, its programs all come from the first run's cache."""
    data_dir, tok = tokenizer_file
    env = {k: v for k, v in env_with_devices(8).items() if not k.startswith(("JAX_COMPILATION_CACHE",
                                                                             "JAX_PERSISTENT_CACHE", "JAXLM_"))}
    common = (f"--config.data.tokenizer={tok}", "--config.train.num_steps=4", "--config.train.eval_every=2")

    def launch(name, home, **extra):
        cmd = pretrain_cmd(tmp_path / name, data_dir, TINY + ":gpt2", *common)
        # every program cached, however fast it compiled (by default only those over a second: a timing-dependent set)
        env_now = {**env, "HOME": str(home), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **extra}
        proc = subprocess.run(cmd, cwd=ROOT, env=env_now, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    home = tmp_path / "home"
    cache = home / ".cache" / "jaxlm" / "xla"
    launch("first", home)
    entries = sorted(os.listdir(cache))
    assert any(name.startswith("jit_step") for name in entries), entries  # the train step
    launch("second", home)
    assert sorted(os.listdir(cache)) == entries  # nothing compiled twice
    launch("elsewhere", tmp_path / "home2", JAXLM_COMPILATION_CACHE=str(tmp_path / "other"))
    assert any(name.startswith("jit_step") for name in os.listdir(tmp_path / "other"))
    assert not (tmp_path / "home2" / ".cache" / "jaxlm").exists()
    launch("off", tmp_path / "home3", JAXLM_COMPILATION_CACHE="off")
    assert not (tmp_path / "home3" / ".cache" / "jaxlm").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_join_train_save_and_restore(tmp_path, tokenizer_file):
    """Two processes x 4 CPU devices on 127.0.0.1 (gloo): sharded steps, a checkpoint, then a resumed run."""
    data_dir, tok = tokenizer_file
    workdir = tmp_path / "multi"

    def launch(num_steps):
        port = _free_port()
        procs = [subprocess.Popen(
            pretrain_cmd(workdir, data_dir, TINY + ":bert", f"--config.data.tokenizer={tok}",
                         f"--config.train.num_steps={num_steps}", "--config.mesh.data=2", "--config.mesh.fsdp=2",
                         "--config.mesh.tensor=2", f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                         "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"),
            cwd=ROOT, env=env_with_devices(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, f"process failed:\n{out[-2000:]}\n{err[-5000:]}"
        return outs

    launch(10)
    first = train_losses(workdir)
    assert sorted(first) == list(range(1, 11))
    launch(15)
    losses = train_losses(workdir)
    assert sorted(losses) == list(range(1, 16))
    assert all(np.isfinite(v) for v in losses.values())
    step, _ = final_params(workdir)
    assert step == 15

    # Fine-tuning's backbone restore on the same two processes: each reads only its own shards, onto the
    # task model's shardings (tests/two_process_restore.py checks every shard against the stored array).
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "two_process_restore.py"), str(workdir),
                               str(port), str(i)], cwd=ROOT, env=env_with_devices(4), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p, (out, err) in zip(procs, [p.communicate(timeout=600) for p in procs]):
        assert p.returncode == 0 and "shards of" in out, f"restore failed:\n{out[-2000:]}\n{err[-5000:]}"


@pytest.mark.slow
def test_quickstart_config_shortened_runs_and_loss_falls(tmp_path, tokenizer_file):
    data_dir, _ = tokenizer_file
    workdir = tmp_path / "qs"
    proc = run(pretrain_cmd(workdir, data_dir, os.path.join(ROOT, "configs", "pretrain", "quickstart.py"),
                            "--config.train.num_steps=40", "--config.train.batch_size=16",
                            "--config.data.tokenizer_vocab_size=800", "--config.model.size=tiny",
                            "--config.train.log_every=1", "--config.train.eval_every=20",
                            "--config.train.eval_batches=2", "--config.train.progress_bar=False",
                            "--config.train.cpu_peak_flops=1e11", "--config.optimizer.warmup_steps=5"))
    losses = train_losses(workdir)
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(36, 41)])
    assert last < first - 0.8, (first, last)  # from ln(vocab) + ln(2) ~ 7.4 nats: a real drop, not noise
    summary = json.load(open(workdir / "summary.json"))
    assert summary["status"] == "completed"
    assert os.path.exists(workdir / "loss_curve.png")
    assert os.path.exists(workdir / "tokenizer.model")
    assert "mfu" in proc.stdout.lower() or "mfu" in json.dumps(summary).lower()


def test_bad_run_length_and_batch_keys_are_named():
    """num_steps=-5 once blamed optimizer.total_steps; batch size 0 named no key."""
    from jaxlm.pretrain import check_train_section
    from tests.configs.tiny import get_config

    for key, value, message in (("num_steps", -5, r"config.train.num_steps=-5 must be >= 1"),
                                ("batch_size", 0, r"config.train.batch_size=0 must be >= 1"),
                                ("checkpoint_every", -1, r"config.train.checkpoint_every=-1 must be >= 0")):
        config = get_config("gpt2")
        config.train[key] = value
        with pytest.raises(ValueError, match=message):
            check_train_section(config, 1)
    config = get_config("gpt2")
    config.train.batch_size = 6
    with pytest.raises(ValueError, match=r"config.train.batch_size=6 is not divisible by the 4 processes"):
        check_train_section(config, 4)


def test_misspelt_config_key_lists_valid_keys(tmp_path):
    proc = subprocess.run(pretrain_cmd(tmp_path, tmp_path, TINY + ":gpt2", "--config.train.num_stepz=3"),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "num_stepz" in proc.stderr and "num_steps" in proc.stderr and "batch_size" in proc.stderr


@pytest.mark.slow
def test_init_from_continues_another_runs_state_with_new_data_settings(tmp_path, tokenizer_file):
    """BERT's second phase: a new run (longer sequences) starts from the first run's step and parameters."""
    data_dir, tok = tokenizer_file
    first, second = tmp_path / "phase1", tmp_path / "phase2"
    run(pretrain_cmd(first, data_dir, TINY + ":gpt2", f"--config.data.tokenizer={tok}",
                     "--config.train.num_steps=10", "--config.optimizer.total_steps=16"))
    run(pretrain_cmd(second, data_dir, TINY + ":gpt2", f"--config.data.tokenizer={tok}",
                     "--config.train.num_steps=16", "--config.optimizer.total_steps=16",
                     "--config.data.seq_len=48", f"--config.train.init_from={first}"))
    assert sorted(train_losses(second)) == list(range(11, 17))
    step, params = final_params(second)
    _, start = final_params(first)
    assert step == 16
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(start)))

