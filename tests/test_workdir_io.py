"""A gs:// workdir: metrics.jsonl, TensorBoard events, summary.json, the loss curve and the pretraining
tokenizer land in the bucket, not on the worker's disk.

The bucket is an in-memory fsspec filesystem served where etils.epath would ask gcsfs for one; like GCS,
it refuses to append to an object.
"""
import glob
import json
import os
import struct
import tempfile

import pytest
from etils import epath
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

from jaxlm.train import metrics as mx

ROOT = "gs://bucket/runs/x"


class FakeGCS(MemoryFileSystem):
    """gs:// objects in memory: whole-object writes only, as on GCS."""

    protocol = ("gs", "gcs")

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(os.fspath(path).removeprefix("gs://"))

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise NotImplementedError(f"GCS objects cannot be appended to: {path}")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """The fake bucket; cwd and the temp dir are empty dirs under tmp_path, to check that nothing stays."""
    fs = FakeGCS(skip_instance_cache=True)
    fs.store, fs.pseudo_dirs = {}, [""]
    monkeypatch.setenv("EPATH_USE_TF", "0")  # gs:// through epath's fsspec backend, as without TensorFlow
    monkeypatch.setattr(epath_backend.fsspec_backend, "fs", lambda path: fs)
    for name in ("cwd", "tmp"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    yield fs
    assert os.listdir(tmp_path / "cwd") == [] and os.listdir(tmp_path / "tmp") == []


def read_scalars(data: bytes) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in a TensorBoard event file (TFRecord framing: length, crc,
    payload, crc)."""
    from tensorboardX.proto import event_pb2

    scalars, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        scalars += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
        pos += 12 + length + 4
    return scalars


def test_metrics_tensorboard_summary_and_plot_go_to_the_bucket(bucket):
    writer = mx.MetricWriter(ROOT, enabled=True, sync_every_s=3600)
    writer.write(1, {"loss": 2.5, "learning_rate": 1e-3})
    assert not epath.Path(ROOT, mx.METRICS_FILE).exists()  # not due yet: no upload per write
    writer.flush()
    assert [r["loss"] for r in mx.read_metrics(ROOT)] == [2.5]
    writer.write(2, {"loss": 2.0})
    writer.write(2, {"loss": 2.25, "accuracy": 0.5}, "eval")
    writer.close()

    resumed = mx.MetricWriter(ROOT, tensorboard=False, enabled=True, sync_every_s=0)  # uploads on every write
    resumed.write(3, {"loss": 1.5})
    assert [(r["step"], r["split"], r["loss"]) for r in mx.read_metrics(ROOT)] == [
        (1, "train", 2.5), (2, "train", 2.0), (2, "eval", 2.25), (3, "train", 1.5)]
    resumed.close()

    events = list(epath.Path(ROOT, mx.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert read_scalars(events[0].read_bytes()) == [
        ("train/loss", 1, 2.5), ("train/learning_rate", 1, pytest.approx(1e-3)),
        ("train/loss", 2, 2.0), ("eval/loss", 2, 2.25), ("eval/accuracy", 2, 0.5)]

    summary = {"status": "completed", "final_step": 3, "final_eval": {"loss": 2.25}}
    mx.write_summary(ROOT, summary, echo=False)
    assert json.loads(epath.Path(ROOT, mx.SUMMARY_FILE).read_text()) == summary
    assert epath.Path(ROOT, mx.LOSS_CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pretraining_tokenizer_is_trained_into_and_read_from_the_bucket(bucket, monkeypatch):
    from ml_collections import ConfigDict

    from jaxlm import data, pretrain

    sources = sorted(glob.glob(os.path.join(os.path.dirname(mx.__file__), "..", "**", "*.py"), recursive=True))
    texts = [{"text": epath.Path(f).read_text()} for f in sources]
    monkeypatch.setattr(data, "load_data_source", lambda *args: texts)
    config = ConfigDict(dict(data=dict(tokenizer="", train_split="train", data_dir="unused", tokenizer_vocab_size=300,
                                       tokenizer_model_type="unigram", tokenizer_num_sentinels=0)))

    trained = pretrain.load_or_train_tokenizer(config, ROOT, "code")
    assert trained.model_file == ROOT + "/tokenizer.model"
    assert epath.Path(ROOT, "tokenizer.vocab").exists()
    monkeypatch.setattr(data, "load_data_source", lambda *args: pytest.fail("trained again"))  # a resumed run reads it
    again = pretrain.load_or_train_tokenizer(config, ROOT, "code")
    assert again.model_file == trained.model_file and again.vocab_size == trained.vocab_size == 300
    assert again.encode("def f(x): return x") == trained.encode("def f(x): return x")


def test_a_failed_periodic_upload_is_retried_without_stopping_training(bucket, monkeypatch, caplog):
    def unavailable(*args, **kwargs):
        raise OSError("503 Service Unavailable")

    writer = mx.MetricWriter(ROOT, tensorboard=False, enabled=True, sync_every_s=0)
    with monkeypatch.context() as outage:
        outage.setattr(bucket, "_open", unavailable)
        writer.write(1, {"loss": 2.5})
    assert "could not copy metrics" in caplog.text and not epath.Path(ROOT, mx.METRICS_FILE).exists()
    writer.write(2, {"loss": 2.0})
    writer.close()
    assert [r["step"] for r in mx.read_metrics(ROOT)] == [1, 2]
