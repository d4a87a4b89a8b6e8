"""A gs:// workdir: metrics.jsonl, TensorBoard events, summary.json, the loss curve and the pretraining
tokenizer land in the bucket, not on the worker's disk; fine-tuning, evaluation, prediction, generation and
imports find and write their tokenizers, configs and JSON(L) files there.

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
from orbax.checkpoint._src.path import gcs_utils

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
    # Orbax asks the real bucket (google-cloud-storage) whether it has a hierarchical namespace: this one has not
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
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

    from jaxlm.data import corpus
    from jaxlm.data import sources as data_sources

    sources = sorted(glob.glob(os.path.join(os.path.dirname(mx.__file__), "..", "**", "*.py"), recursive=True))
    texts = [{"text": epath.Path(f).read_text()} for f in sources]
    monkeypatch.setattr(corpus, "load_data_source", lambda *args: texts)
    data = ConfigDict(dict(tokenizer="", tokenizer_extra_ids=0, train_split="train", data_dir="unused",
                           tokenizer_vocab_size=300, tokenizer_model_type="unigram", tokenizer_num_sentinels=0))

    trained = data_sources.load_or_train_tokenizer(data, ROOT, "code")
    assert trained.model_file == ROOT + "/tokenizer.model"
    assert epath.Path(ROOT, "tokenizer.vocab").exists()
    # a resumed run reads it
    monkeypatch.setattr(corpus, "load_data_source", lambda *args: pytest.fail("trained again"))
    again = data_sources.load_or_train_tokenizer(data, ROOT, "code")
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


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning, evaluation, prediction, generation and imports on a gs:// workdir


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> str:
    """A small sentencepiece model on local disk (its bytes are put in the bucket by the tests)."""
    from pydoc_data.topics import topics

    from jaxlm.data import train_tokenizer

    prefix = tmp_path_factory.mktemp("sp") / "sp"
    train_tokenizer(iter(list(topics.values())[:60]), prefix, vocab_size=300)
    return f"{prefix}.model"


def put(path: str, data: bytes | str) -> str:
    p = epath.Path(path)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def word_level_tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<unk>", "<s>", "</s>", "hello", "bucket", "world"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return backend.to_str()


def test_a_pretraining_runs_tokenizer_in_the_bucket_is_found_loaded_and_copied(bucket, sp_model):
    from jaxlm.data import Tokenizer
    from jaxlm.data import tokenizer_io as tp

    local = Tokenizer(sp_model)
    pretrain = put("gs://bucket/pretrain/tokenizer.model", epath.Path(sp_model).read_bytes())
    assert tp.find_run_tokenizer("gs://bucket/pretrain", None) == pretrain
    assert tp.find_run_tokenizer("gs://bucket/other", {"tokenizer_file": pretrain}) == pretrain
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        tp.find_run_tokenizer("gs://bucket/other", {"tokenizer_file": "gs://bucket/none.model"})

    remote = tp.load_tokenizer(pretrain, "bert")
    assert remote.model_file == pretrain and remote.vocab_size == local.vocab_size == 300
    assert remote.encode("The quick brown fox") == local.encode("The quick brown fox")
    assert Tokenizer(pretrain, extra_ids=5).vocab_size == 305  # config.data.tokenizer=gs://...model
    with pytest.raises(FileNotFoundError, match="gs://bucket/none.model"):
        tp.load_tokenizer("gs://bucket/none.model", "bert")
    with pytest.raises(FileNotFoundError, match="gs://bucket/none.model"):
        Tokenizer("gs://bucket/none.model")

    saved = tp.keep_tokenizer(pretrain, "gs://bucket/finetune")
    assert saved == "gs://bucket/finetune/tokenizer.model"
    assert epath.Path(saved).read_bytes() == epath.Path(sp_model).read_bytes()
    assert tp.keep_tokenizer(saved, "gs://bucket/finetune") == saved  # a resumed run: onto itself, untouched
    assert tp.keep_tokenizer(sp_model, "gs://bucket/from-local") == "gs://bucket/from-local/tokenizer.model"
    assert epath.Path("gs://bucket/from-local/tokenizer.model").read_bytes() == epath.Path(sp_model).read_bytes()


def test_hf_tokenizer_directories_in_the_bucket(bucket, sp_model):
    from jaxlm import workdir as wd
    from jaxlm.data import Tokenizer
    from jaxlm.data import tokenizer_io as tp
    from jaxlm.data.hf_tokenizer import HFTokenizer, copy_tokenizer_files

    imported = "gs://bucket/imported"
    put(f"{imported}/tokenizer/tokenizer.json", word_level_tokenizer_json())
    put(f"{imported}/tokenizer/tokenizer_config.json", json.dumps({"eos_token": "</s>"}))
    assert tp.find_run_tokenizer(imported, None) == f"{imported}/tokenizer"
    assert tp.find_run_tokenizer(imported, {"tokenizer_dir": "tokenizer"}) == f"{imported}/tokenizer"
    for tokenizer in (tp.load_tokenizer(f"{imported}/tokenizer", "gpt2"),
                      wd.tokenizer_of(imported, {"tokenizer_dir": "tokenizer"}, "gpt2")[0]):
        assert isinstance(tokenizer, HFTokenizer) and tokenizer.kind == "tokenizer_json"
        assert tokenizer.model_file == f"{imported}/tokenizer/tokenizer.json"
        assert tokenizer.encode("hello bucket world") == [4, 5, 6] and tokenizer.eos_id == 3

    copied = tp.keep_tokenizer(f"{imported}/tokenizer", "gs://bucket/finetune")
    assert copied == "gs://bucket/finetune/tokenizer"
    assert sorted(p.name for p in epath.Path(copied).iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert tp.load_tokenizer(copied, "gpt2").encode("world hello") == [6, 4]

    bert = "gs://bucket/bert/tokenizer"  # WordPiece: vocab.txt is read line by line
    put(f"{bert}/vocab.txt", "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "héllo", "wörld", "##s", ""]))
    put(f"{bert}/tokenizer_config.json", json.dumps({"do_lower_case": False, "strip_accents": False}))
    assert tp.load_tokenizer(bert, "bert").encode("héllo wörlds") == [5, 6, 7]

    t5 = "gs://bucket/t5/tokenizer"  # sentencepiece in an HF directory, with T5's appended sentinels
    put(f"{t5}/spiece.model", epath.Path(sp_model).read_bytes())
    put(f"{t5}/tokenizer_config.json", json.dumps({"extra_ids": 4}))
    spiece = tp.load_tokenizer(t5, "t5")
    assert isinstance(spiece, Tokenizer) and spiece.model_file == f"{t5}/spiece.model" and spiece.vocab_size == 304
    assert copy_tokenizer_files(t5, "gs://bucket/t5-copy") == ["tokenizer_config.json", "spiece.model"]
    assert tp.load_tokenizer("gs://bucket/t5-copy", "t5").vocab_size == 304


def test_an_import_written_to_the_bucket_is_read_back_for_fine_tuning_and_generation(bucket, tmp_path, monkeypatch):
    """write_workdir's tokenizer copy and jaxlm_config.json; the Orbax checkpoint itself is faked (tensorstore
    does not write to this fake bucket)."""
    import dataclasses

    from jaxlm import workdir as wd
    from jaxlm.convert import hf
    from jaxlm.models import get_model_config
    from jaxlm.train import checkpoint

    saved_by_orbax = {}

    class Manager:
        def wait_until_finished(self):
            pass

        def close(self):
            pass

    def save_checkpoint(manager, step, state, config):
        saved_by_orbax[step] = config
        put(f"{workdir}/checkpoints/{step}/state/_METADATA", "{}")  # what workdir.step_dir looks for
        return True

    monkeypatch.setattr(checkpoint, "make_checkpoint_manager", lambda *args, **kwargs: Manager())
    monkeypatch.setattr(checkpoint, "save_checkpoint", save_checkpoint)
    model_dir = tmp_path / "hf"
    model_dir.mkdir()
    (model_dir / "tokenizer.json").write_text(word_level_tokenizer_json())
    config = get_model_config("gpt2", None, vocab_size=7, hidden_size=16, num_layers=1, num_heads=2)
    imported = hf.Imported(family="gpt2", config=config, params={}, tokenizer=None,
                           report=hf.ConversionReport([], [], [], []), hf_config={"model_type": "gpt2"},
                           files=[str(model_dir / "model.safetensors")])

    workdir = "gs://bucket/imported"
    written = hf.write_workdir(workdir, imported, str(model_dir))
    assert saved_by_orbax == {0: written} and written["tokenizer_dir"] == "tokenizer"
    assert json.loads(epath.Path(workdir, hf.CONFIG_FILE).read_text()) == written
    assert [p.name for p in epath.Path(workdir, "tokenizer").iterdir()] == ["tokenizer.json"]

    model_config, saved = wd.read_model_config(f"{workdir}/checkpoints/0")  # no config item: jaxlm_config.json
    assert model_config == config and saved == written
    assert dataclasses.asdict(model_config) == written["model_config"]
    tokenizer, _ = wd.tokenizer_of(workdir, saved, model_config.family)
    assert tokenizer.encode("hello world") == [4, 6]
    epath.Path(workdir, hf.CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"{workdir}/jaxlm_config.json is absent"):
        wd.read_model_config(f"{workdir}/checkpoints/0")


def test_json_and_jsonl_files_in_the_bucket(bucket, monkeypatch, capsys):
    from types import SimpleNamespace

    from absl import flags

    from jaxlm import finetune, generate, predict
    from jaxlm.tasks import BadInputError
    from jaxlm.tasks.finetuning import write_json

    write_json(f"{ROOT}/eval_dev.json", {"accuracy": 0.75, "file": "gs://bucket/dev.jsonl"})
    assert json.loads(epath.Path(ROOT, "eval_dev.json").read_text()) == {"accuracy": 0.75,
                                                                         "file": "gs://bucket/dev.jsonl"}

    put(f"{ROOT}/{mx.METRICS_FILE}", "".join(json.dumps(r) + "\n" for r in [
        {"step": 10, "split": "eval", "time": 1.0, "accuracy": 0.5},
        {"step": 10, "split": "train", "time": 1.0, "loss": 0.7},
        {"step": 20, "split": "eval", "time": 2.0, "accuracy": 0.75}]))
    assert finetune._eval_at(ROOT, 10) == {"accuracy": 0.5} and finetune._eval_at(ROOT, 30) is None

    inputs = put("gs://bucket/in.jsonl", '\ufeff{"text": "café"}\r\n\r\n{"text": "b"}\n'.encode())  # BOM, CRLF
    assert predict.read_jsonl(inputs) == [{"text": "café"}, {"text": "b"}]
    put("gs://bucket/bad.jsonl", '{"text": "a"}\n{"text": \n')
    with pytest.raises(BadInputError, match="gs://bucket/bad.jsonl:2: not valid JSON"):
        predict.read_jsonl("gs://bucket/bad.jsonl")

    monkeypatch.setattr(flags, "FLAGS", SimpleNamespace(input=inputs, output="gs://bucket/out/predictions.jsonl",
                                                        workdir=ROOT, step=-1, batch_size=0))
    monkeypatch.setattr(predict, "predict", lambda workdir, records, **kwargs: [{**r, "label": "ü"} for r in records])
    predict.main(["predict"])
    assert epath.Path("gs://bucket/out/predictions.jsonl").read_bytes().decode() == (
        '{"text": "café", "label": "ü"}\n{"text": "b", "label": "ü"}\n')

    put("gs://bucket/blank.txt", "\n  \n")
    assert generate.main(["--checkpoint", ROOT, "--prompts_file", "gs://bucket/blank.txt"]) == 1
    assert "no prompts" in capsys.readouterr().err
    put("gs://bucket/prompts.txt", "The quick brown fox\n")  # read: the run goes on to the (absent) checkpoint
    assert generate.main(["--checkpoint", ROOT, "--prompts_file", "gs://bucket/prompts.txt"]) == 1
    assert f"{ROOT}/checkpoints not found" in capsys.readouterr().err


def test_task_files_in_the_bucket_are_read_like_local_files(bucket):
    """Fine-tuning data files on gs://: the readers (GLUE TSV with a BOM, CSV with a quoted newline, parallel
    text, SQuAD JSON) read them as they read local files, and errors still name gs://...:line."""
    from jaxlm import tasks

    tsv = put("gs://b/glue/dev.tsv", "\ufeffsentence\tlabel\na fine film \t1\nawful\t0\n")
    examples, _ = tasks.read_glue(tsv, "sst2")
    assert [(e.text_a, e.label, e.guid) for e in examples] == [("a fine film", 1, f"{tsv}:2"), ("awful", 0, f"{tsv}:3")]
    csv_path = put("gs://b/spam.csv", 'text,label\n"two\nlines",spam\nhi,ham\n')
    layout = tasks.TextLayout("text", "label", labels=("ham", "spam"))
    examples, _ = tasks.read_text_classification(csv_path, layout)
    assert [(e.text_a, e.label) for e in examples] == [("two\nlines", 1), ("hi", 0)]
    put("gs://b/m30k/val.en", "A dog runs.\nTwo men.\n")
    put("gs://b/m30k/val.de", "Ein Hund rennt.\n")
    with pytest.raises(tasks.BadInputError, match=r"gs://b/m30k/val.en has 2 lines but gs://b/m30k/val.de has 1"):
        tasks.read_parallel(*tasks.parallel_paths("gs://b/m30k/val", "en", "de"))
    squad = put("gs://b/squad.json", json.dumps({"data": [{"title": "T", "paragraphs": [{
        "context": "Denver won.", "qas": [{"id": "q1", "question": "Who?",
                                           "answers": [{"text": "Denver", "answer_start": 0}]}]}]}]}))
    [qa], _ = tasks.read_squad(squad)
    assert (qa.id, qa.answers[0].text) == ("q1", "Denver")
    with pytest.raises(FileNotFoundError, match="gs://b/missing.tsv"):
        tasks.read_glue("gs://b/missing.tsv", "sst2")
