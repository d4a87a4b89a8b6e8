"""sentence-transformers directories in and out: jaxlm's embeddings equal SentenceTransformer.encode on the same
texts (within 1e-5, raw and as cosine similarities), ST's hub layouts (6.x as it saves itself, and the 2.x / 3.x
files released models carry) import, an export loads back in sentence-transformers, and modules jaxlm cannot
compute are errors naming them.

Every model is a tiny random one built locally and saved with sentence-transformers itself; nothing is downloaded.
"""
import json
import os
import re

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="the parity tests compare against sentence-transformers")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.base.modules import Dense, Normalize, Transformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Pooling  # noqa: E402
from test_convert import (  # noqa: E402
    TEXTS,
    WORDS,
    _bert_config,
    _gpt2_config,
    _roberta_config,
    make_hf_model,
    write_byte_level_bpe,
    write_wordpiece_vocab,
)

from jaxlm import embed  # noqa: E402
from jaxlm.convert import sentence_transformers as st_convert  # noqa: E402
from jaxlm.convert.__main__ import main as convert_main  # noqa: E402
from jaxlm.tasks.embedding import DENSE_ACTIVATIONS  # noqa: E402

# One batch of very different lengths: one word, a sentence, and a text far beyond max_seq_length (cut there).
LONG = " ".join(TEXTS * 4)
BATCH = ["dog", TEXTS[0], LONG, "the fox.", TEXTS[1] + " " + TEXTS[2], "a lazy dog sleeps", "quick", TEXTS[2]]
BATCH_SIZE = 8  # a multiple of the 8 simulated devices; ST uses the same
TOLERANCE = 1e-5

HF_BACKBONES = {
    "bert": (transformers.BertModel, _bert_config),
    "roberta": (transformers.RobertaModel, _roberta_config),
    "gpt2": (transformers.GPT2Model, _gpt2_config),
}


@pytest.fixture(scope="module")
def hf_backbones(tmp_path_factory):
    """family -> a bare HF model directory (config.json, model.safetensors, tokenizer files)."""
    out = {}
    for family, (model_cls, make_config) in HF_BACKBONES.items():
        model_dir = str(tmp_path_factory.mktemp(f"hf_{family}"))
        make_hf_model(model_cls, make_config(), seed=1).save_pretrained(model_dir)
        if family == "bert":
            write_wordpiece_vocab(model_dir)
        elif family == "roberta":
            write_byte_level_bpe(model_dir, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        else:
            write_byte_level_bpe(model_dir, ["<|endoftext|>"])
        out[family] = model_dir
    return out


def save_st(hf_dir, out_dir, pooling_mode, *, dense=None, normalize=False, max_seq_length=None, seed=0):
    """A SentenceTransformer over the HF model, saved by sentence-transformers itself. dense: (out_features,
    torch activation)."""
    transformer = Transformer(hf_dir, max_seq_length=max_seq_length)
    if transformer.tokenizer.pad_token is None:  # GPT-2: ST pads a batch, so it needs a pad token
        transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
    width = transformer.get_embedding_dimension()
    pooling = Pooling(width, pooling_mode=pooling_mode)
    modules = [transformer, pooling]
    if dense is not None:
        torch.manual_seed(seed)
        layer = Dense(pooling.get_embedding_dimension(), dense[0], activation_function=dense[1])
        with torch.no_grad():
            layer.linear.bias.add_(0.1 * torch.randn_like(layer.linear.bias))
        modules.append(layer)
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, device="cpu")
    model.save(str(out_dir))
    return model


def st_encode(model_dir, texts=BATCH):
    return SentenceTransformer(str(model_dir), device="cpu").encode(texts, batch_size=BATCH_SIZE)


def jaxlm_encode(workdir, texts=BATCH):
    return embed.load(str(workdir)).encode(texts, batch_size=BATCH_SIZE)


def cosines(x):
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x @ x.T


def assert_same_embeddings(ours, theirs):
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    assert np.abs(theirs).max() > 1e-2  # the comparison is between non-trivial numbers
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(cosines(ours), cosines(theirs), atol=TOLERANCE, rtol=0)


# (family, ST pooling_mode, dense (out, activation) or None, normalize, max_seq_length, jaxlm pooling)
VARIANTS = {
    "bert_mean": ("bert", "mean", None, False, 48, "mean"),
    "bert_cls_dense_tanh_normalize": ("bert", "cls", (16, torch.nn.Tanh()), True, 48, "cls"),
    "bert_max_position_table": ("bert", "max", None, False, None, "max"),  # no max_seq_length: ST caps at 64
    "roberta_mean_and_sqrt_len": ("roberta", ("mean", "mean_sqrt_len_tokens"), None, False, 40, "mean+mean_sqrt_len"),
    "gpt2_lasttoken_dense_identity": ("gpt2", "lasttoken", (24, torch.nn.Identity()), False, 48, "last"),
}


@pytest.fixture(scope="module")
def imported(hf_backbones, tmp_path_factory):
    """variant -> (ST directory, jaxlm workdir imported from it with the CLI, the CLI's output)."""
    cache = {}

    def get(variant):
        if variant not in cache:
            family, mode, dense, normalize, max_seq_length, _ = VARIANTS[variant]
            root = tmp_path_factory.mktemp(variant)
            save_st(hf_backbones[family], root / "st", mode, dense=dense, normalize=normalize,
                    max_seq_length=max_seq_length)
            scan = ["--scan_layers"] if family == "gpt2" else []  # the stacked layout embeds and exports the same
            assert convert_main(["from-hf", "--model_dir", str(root / "st"), "--workdir", str(root / "run")]
                                + scan) == 0
            cache[variant] = (root / "st", root / "run")
        return cache[variant]
    return get


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_imported_pipelines_embed_as_sentence_transformers_does(imported, variant, capsys):
    family, _, dense, normalize, max_seq_length, pooling = VARIANTS[variant]
    st_dir, workdir = imported(variant)
    saved = json.load(open(workdir / "jaxlm_config.json"))
    spec = saved["task_spec"]
    assert saved["model"]["family"] == family and saved["tokenizer_dir"] == "tokenizer"
    assert saved["model"]["scan_layers"] is (family == "gpt2")
    assert (spec["task"], spec["pooling"], spec["normalize"]) == ("retrieval", pooling, normalize)
    assert spec["embedding_dim"] == (dense[0] if dense else 0)
    assert spec["max_len"] == spec["max_query_len"] == (max_seq_length or 64)
    assert saved["sentence_transformers"]["modules"] == json.load(open(st_dir / "modules.json"))
    assert saved["sentence_transformers"]["config"]["similarity_fn_name"] == "cosine"

    model = SentenceTransformer(str(st_dir), device="cpu")
    assert model.max_seq_length == spec["max_len"]
    # The long text is cut: ST's tokenizer gives it more than max_seq_length tokens untruncated.
    assert len(model.tokenizer(LONG)["input_ids"]) > spec["max_len"]
    theirs = model.encode(BATCH, batch_size=BATCH_SIZE)
    embedder = embed.load(str(workdir))
    assert embedder.max_len == spec["max_len"]
    assert_same_embeddings(embedder.encode(BATCH, batch_size=BATCH_SIZE), theirs)
    # Each text in a batch of its own embeds as in the mixed one: the other rows never change an embedding.
    alone = np.concatenate([embedder.encode([t] * BATCH_SIZE, batch_size=BATCH_SIZE)[:1] for t in BATCH[:3]])
    np.testing.assert_allclose(alone, theirs[:3], atol=TOLERANCE, rtol=0)


def test_the_cli_says_it_imported_the_whole_pipeline(hf_backbones, tmp_path, capsys):
    save_st(hf_backbones["bert"], tmp_path / "st", "cls", dense=(16, torch.nn.Tanh()), normalize=True,
            max_seq_length=48)
    capsys.readouterr()
    assert convert_main(["from-hf", "--model_dir", str(tmp_path / "st"), "--workdir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "sentence-transformers model (modules.json found)" in out
    assert "Transformer -> Pooling(cls) -> Dense(32 -> 16, tanh) -> Normalize, max_seq_length 48" in out
    # A plain HF directory still imports as a language model.
    assert convert_main(["from-hf", "--model_dir", hf_backbones["bert"], "--workdir", str(tmp_path / "lm")]) == 0
    assert "sentence-transformers" not in capsys.readouterr().out
    assert "task_spec" not in json.load(open(tmp_path / "lm" / "jaxlm_config.json"))


# The bare HF model each export is, and what transformers initialises fresh on loading it: jaxlm's RoBERTa has no
# pooler (RobertaModel's is unused by ST: the import reports it unused and the export leaves it out).
EXPORTS = {"bert_cls_dense_tanh_normalize": ("BertModel", []),
           "roberta_mean_and_sqrt_len": ("RobertaModel", ["pooler.dense.bias", "pooler.dense.weight"]),
           "gpt2_lasttoken_dense_identity": ("GPT2Model", [])}


@pytest.mark.parametrize("variant", list(EXPORTS))
def test_export_round_trip_loads_in_sentence_transformers_with_the_same_embeddings(imported, variant, tmp_path):
    st_dir, workdir = imported(variant)
    out = tmp_path / "exported"
    assert convert_main(["to-st", "--workdir", str(workdir), "--out", str(out)]) == 0
    # The layout sentence-transformers 6 writes itself: the same modules.json and module configs.
    assert json.load(open(out / "modules.json")) == json.load(open(st_dir / "modules.json"))
    for module in json.load(open(st_dir / "modules.json"))[1:]:
        config = os.path.join(module["path"], "config.json")
        assert json.load(open(out / config)) == json.load(open(st_dir / config)), config
    # The transformer is the bare backbone: transformers loads it with nothing unexpected.
    reloaded, info = transformers.AutoModel.from_pretrained(str(out), output_loading_info=True)
    architecture, fresh = EXPORTS[variant]
    assert type(reloaded).__name__ == architecture
    assert sorted(info["missing_keys"]) == fresh and not info["unexpected_keys"] and not info["mismatched_keys"], info

    ours = jaxlm_encode(workdir)
    assert_same_embeddings(st_encode(out), ours)
    assert_same_embeddings(st_encode(out), st_encode(st_dir))
    # ... and it imports back (in the same layer layout) to the same jaxlm embeddings, bitwise.
    scan = ["--scan_layers"] if json.load(open(workdir / "jaxlm_config.json"))["model"]["scan_layers"] else []
    assert convert_main(["from-hf", "--model_dir", str(out), "--workdir", str(tmp_path / "again")] + scan) == 0
    np.testing.assert_array_equal(jaxlm_encode(tmp_path / "again"), ours)


def test_to_st_refuses_a_non_empty_directory_unless_overwrite(imported, hf_backbones, tmp_path, capsys):
    _, workdir = imported("bert_mean")
    out = tmp_path / "out"
    (out / "2_Dense").mkdir(parents=True)  # another model's export, with a Dense layer this one lacks
    (out / "2_Dense" / "model.safetensors").write_text("another model")
    (out / "modules.json").write_text("another model")
    assert convert_main(["to-st", "--workdir", str(workdir), "--out", str(out)]) == 1
    assert "pass --overwrite to write into it" in capsys.readouterr().err
    assert (out / "modules.json").read_text() == "another model"
    assert convert_main(["to-st", "--workdir", str(workdir), "--out", str(out), "--overwrite"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["removed"] == ["2_Dense/model.safetensors"] and not (out / "2_Dense").exists()
    assert result["modules"] == ["Transformer", "Pooling"]
    assert_same_embeddings(st_encode(out), jaxlm_encode(workdir))
    # Only embedding runs export: a language model's workdir is named as such.
    assert convert_main(["from-hf", "--model_dir", hf_backbones["bert"], "--workdir", str(tmp_path / "lm")]) == 0
    assert convert_main(["to-st", "--workdir", str(tmp_path / "lm"), "--out", str(tmp_path / "lm_out")]) == 1
    assert "not an embedding run" in capsys.readouterr().err


def write_cased_tokenizer_json(model_dir, baked_length):
    """A cased WordPiece tokenizer.json as released checkpoints ship them: fixed padding and truncation baked in
    (jaxlm turns both off on load; ST truncates to its own max_seq_length)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    backend.enable_padding(pad_id=0, pad_token="[PAD]", length=baked_length)
    backend.enable_truncation(max_length=baked_length)
    backend.save(os.path.join(model_dir, "tokenizer.json"))
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": False, "model_max_length": 512,
                   "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                   "mask_token": "[MASK]"}, f)


def write_legacy_st_dir(model_dir, *, max_seq_length=16, seed=0):
    """An ST 2.x-style hub directory written by hand: sentence_transformers.models.* types, pytorch_model.bin
    weights, sentence_bert_config.json {max_seq_length, do_lower_case}, the pooling_mode_* booleans (max and mean:
    ST concatenates them max first), a Dense in pytorch_model.bin and a Normalize folder without a config."""
    os.makedirs(model_dir)
    bert = make_hf_model(transformers.BertModel, _bert_config(), seed=seed)
    bert.config.save_pretrained(model_dir)
    torch.save(bert.state_dict(), os.path.join(model_dir, "pytorch_model.bin"))
    write_cased_tokenizer_json(model_dir, baked_length=24)
    json.dump({"max_seq_length": max_seq_length, "do_lower_case": True},
              open(os.path.join(model_dir, "sentence_bert_config.json"), "w"))
    json.dump({"__version__": {"sentence_transformers": "2.2.2", "transformers": "4.30.0", "pytorch": "2.0.1"}},
              open(os.path.join(model_dir, "config_sentence_transformers.json"), "w"))
    modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense"), ("3_Normalize", "Normalize")]
    json.dump([{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
               for i, (path, kind) in enumerate(modules)], open(os.path.join(model_dir, "modules.json"), "w"))
    for path, _ in modules[1:]:
        os.makedirs(os.path.join(model_dir, path))
    json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
               "pooling_mode_max_tokens": True, "pooling_mode_mean_sqrt_len_tokens": False,
               "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True},
              open(os.path.join(model_dir, "1_Pooling", "config.json"), "w"))
    json.dump({"in_features": 64, "out_features": 16, "bias": True,
               "activation_function": "torch.nn.modules.activation.Tanh"},
              open(os.path.join(model_dir, "2_Dense", "config.json"), "w"))
    generator = torch.Generator().manual_seed(seed)
    torch.save({"linear.weight": 0.2 * torch.randn(16, 64, generator=generator),
                "linear.bias": 0.1 * torch.randn(16, generator=generator)},
               os.path.join(model_dir, "2_Dense", "pytorch_model.bin"))


def test_a_hub_style_legacy_directory_imports_with_st_truncation_and_lowercasing(tmp_path):
    model_dir = str(tmp_path / "legacy")
    write_legacy_st_dir(model_dir, max_seq_length=16)
    workdir = tmp_path / "run"
    imported = st_convert.import_sentence_transformers(model_dir, str(workdir))
    assert imported.pipeline.describe() == "Transformer -> Pooling(max+mean) -> Dense(64 -> 16, tanh) -> Normalize"
    assert imported.spec.max_len == 16 and imported.pipeline.do_lower_case

    model = SentenceTransformer(model_dir, device="cpu")
    assert model.max_seq_length == 16
    texts = ["The Quick Brown FOX jumps over the Lazy Dog again and again, and the Dog sleeps.", "DOG", TEXTS[0],
             LONG.upper()]
    full = [len(model.tokenizer(t, truncation=False)["input_ids"]) for t in texts]
    assert max(full) > 16 and min(full) < 16  # some texts are cut to 16 tokens, as ST cuts them
    embedder = embed.load(str(workdir))
    # do_lower_case lives in the workdir's tokenizer: cased text tokenizes as its lowercase
    assert embedder.tokenizer.encode("The DOG") == embedder.tokenizer.encode("the dog")
    assert 1 not in embedder.tokenizer.encode(texts[0])  # no [UNK]: every word is in the (lowercase) vocabulary
    assert_same_embeddings(embedder.encode(texts, batch_size=BATCH_SIZE), model.encode(texts, batch_size=BATCH_SIZE))

    # Exported in ST 6's layout, it embeds the same in sentence-transformers.
    out = tmp_path / "exported"
    st_convert.export_sentence_transformers(str(workdir), str(out))
    pooling = json.load(open(out / "1_Pooling" / "config.json"))
    assert pooling == {"embedding_dimension": 32, "pooling_mode": ["max", "mean"], "include_prompt": True}
    assert json.load(open(out / "sentence_bert_config.json"))["max_seq_length"] == 16
    assert_same_embeddings(st_encode(out, texts), model.encode(texts, batch_size=BATCH_SIZE))


def _edit_json(path, **changes):
    data = json.load(open(path))
    data.update(changes)
    json.dump(data, open(path, "w"))


def _retype(model_dir, idx, new_type, path=None):
    modules = json.load(open(os.path.join(model_dir, "modules.json")))
    modules[idx]["type"] = new_type
    if path is not None:
        modules[idx]["path"] = path
    json.dump(modules, open(os.path.join(model_dir, "modules.json"), "w"))


BAD_INPUTS = {
    "lstm_module": (lambda d: _retype(d, 3, "sentence_transformers.models.LSTM", "3_LSTM"),
                    r"module 3 'sentence_transformers.models.LSTM' \(path '3_LSTM'\) is not supported"),
    "word_embeddings_module": (lambda d: _retype(d, 0, "sentence_transformers.models.WordEmbeddings"),
                               r"module 0 'sentence_transformers.models.WordEmbeddings' \(path ''\) is not supported"),
    "custom_code_module": (lambda d: _retype(d, 2, "my_project.layers.Dense"),
                           r"module 2 'my_project.layers.Dense' \(path '2_Dense'\) is not supported"),
    "router": (lambda d: _retype(d, 0, "sentence_transformers.base.modules.router.Router"),
               r"'sentence_transformers.base.modules.router.Router'.*is not supported"),
    "normalize_before_dense": (lambda d: (_retype(d, 2, "sentence_transformers.models.Normalize", "3_Normalize"),
                                          _retype(d, 3, "sentence_transformers.models.Dense", "2_Dense")),
                               r"module 2 'sentence_transformers.models.Normalize' \(path '3_Normalize'\) comes "
                               "where jaxlm's chain cannot place it"),
    "weighted_mean_pooling": (lambda d: _edit_json(os.path.join(d, "1_Pooling", "config.json"),
                                                   pooling_mode_weightedmean_tokens=True),
                              r"module 1 .*Pooling' \(path '1_Pooling'\) pools with \['weightedmean'\]"),
    "unknown_activation": (lambda d: _edit_json(os.path.join(d, "2_Dense", "config.json"),
                                                activation_function="torch.nn.modules.activation.SiLU"),
                           r"module 2 .*Dense' \(path '2_Dense'\) has activation_function="
                           r"'torch.nn.modules.activation.SiLU'"),
    "dense_on_tokens": (lambda d: _edit_json(os.path.join(d, "2_Dense", "config.json"),
                                             module_input_name="token_embeddings"),
                        r"Dense' \(path '2_Dense'\) has module_input_name='token_embeddings'"),
    "cross_encoder": (lambda d: _edit_json(os.path.join(d, "config_sentence_transformers.json"),
                                           model_type="CrossEncoder"),
                      r"config_sentence_transformers.json: model_type='CrossEncoder'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_modules_jaxlm_cannot_compute_are_errors_naming_them(tmp_path, capsys, case):
    edit, message = BAD_INPUTS[case]
    model_dir = str(tmp_path / "st")
    write_legacy_st_dir(model_dir)
    edit(model_dir)
    with pytest.raises(ValueError, match=message):
        st_convert.read_sentence_transformers(model_dir)
    assert convert_main(["from-hf", "--model_dir", model_dir, "--workdir", str(tmp_path / "run")]) == 1
    assert re.search(message, capsys.readouterr().err) and not (tmp_path / "run").exists()


def test_every_dense_activation_has_a_torch_class():
    assert set(st_convert.ACTIVATIONS_TO_TORCH) == set(DENSE_ACTIVATIONS)
    assert {st_convert.ACTIVATIONS_FROM_TORCH[p.rsplit(".", 1)[-1]] for p in st_convert.ACTIVATIONS_TO_TORCH.values()} \
        == set(DENSE_ACTIVATIONS)
    for path in st_convert.ACTIVATIONS_TO_TORCH.values():  # real torch classes, as ST imports them on load
        module, name = path.rsplit(".", 1)
        assert issubclass(getattr(__import__(module, fromlist=[name]), name), torch.nn.Module)
