"""Hugging Face import/export: logits parity with transformers, exact round trips, reports, errors, tokenizers.

Every HF model is a tiny random one built from a config object and saved locally; nothing is downloaded.
"""
import json
import os
import shutil
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="HF parity tests compare against transformers' PyTorch models")
transformers = pytest.importorskip("transformers", reason="HF parity tests need transformers")
pytest.importorskip("tokenizers", reason="HF tokenizer tests need the tokenizers library")

from safetensors.numpy import load_file, save_file  # noqa: E402

from jaxlm.convert import import_hf, load_hf, save_hf  # noqa: E402
from jaxlm.convert.__main__ import main as convert_main  # noqa: E402
from jaxlm.data import load_tokenizer  # noqa: E402
from jaxlm.models import build_model  # noqa: E402

TEXTS = ["the quick brown fox jumps over the lazy dog.", "a lazy dog sleeps; the fox jumps again!",
         "quick foxes, lazy dogs and brown jumps."]
SENTENCE = "The quick brown fox jumps over a lazy dog again."
WORDS = ["the", "quick", "brown", "fox", "jump", "##s", "over", "lazy", "dog", "a", "sleep", "again", "and",
         "##es", ".", ",", ";", "!", "t", "##he"]
BPE_VOCAB = 300  # 256 byte-level symbols + 5 specials + merges


def _bert_config(**kw):
    return transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64, **kw)


def _roberta_config(**kw):
    return transformers.RobertaConfig(vocab_size=BPE_VOCAB, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=66,
                                      type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                                      eos_token_id=2, **kw)


def _gpt2_config(**kw):
    return transformers.GPT2Config(vocab_size=BPE_VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                   bos_token_id=0, eos_token_id=0, **kw)


HF_MODELS = {
    "bert": (transformers.BertForPreTraining, _bert_config),
    "roberta": (transformers.RobertaForMaskedLM, _roberta_config),
    "gpt2": (transformers.GPT2LMHeadModel, _gpt2_config),
}
PAD = {"bert": 0, "roberta": 1, "gpt2": 0}


def make_hf_model(model_cls, config, seed=0):
    """A random model in eval mode; biases and LayerNorm params get noise too, so that a transposed or
    swapped tensor cannot go unnoticed behind zero/one initialisations."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def write_wordpiece_vocab(model_dir):
    with open(os.path.join(model_dir, "vocab.txt"), "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")


def write_byte_level_bpe(model_dir, specials):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(TEXTS * 5, vocab_size=BPE_VOCAB, min_frequency=1, special_tokens=specials,
                            show_progress=False)
    tok.save_model(model_dir)  # vocab.json + merges.txt
    assert tok.get_vocab_size() <= BPE_VOCAB


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """family -> (HF model, directory with config.json, model.safetensors and the tokenizer files)."""
    out = {}
    for family, (model_cls, make_config) in HF_MODELS.items():
        model = make_hf_model(model_cls, make_config())
        model_dir = str(tmp_path_factory.mktemp(family))
        model.save_pretrained(model_dir)
        if family == "bert":
            write_wordpiece_vocab(model_dir)
        elif family == "roberta":
            write_byte_level_bpe(model_dir, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        else:
            write_byte_level_bpe(model_dir, ["<|endoftext|>"])
        out[family] = (model, model_dir)
    return out


def batch_with_padding(family, vocab_size, seed=0):
    """Two rows of 12 tokens; the second ends in 4 padding tokens (attention_mask 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab_size, (2, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    ids[1, 8:] = PAD[family]
    token_types = np.zeros_like(ids)
    token_types[:, 6:] = 1 if family == "bert" else 0
    token_types[1, 8:] = 0
    return ids, mask, token_types


def hf_outputs(family, model, ids, mask, token_types):
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    if family == "bert":
        kw["token_type_ids"] = torch.tensor(token_types)
    with torch.no_grad():
        out = model(**kw)
    result = {"hidden": out.hidden_states[-1].numpy()}
    if family == "bert":
        result.update(logits=out.prediction_logits.numpy(), nsp_logits=out.seq_relationship_logits.numpy())
    else:
        result["logits"] = out.logits.numpy()
    return result


def jaxlm_outputs(family, config, params, ids, mask, token_types):
    model = build_model(config)
    variables = {"params": params}
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    if family == "gpt2":
        return {"logits": np.asarray(model.apply(variables, ids, segment_ids=mask)),
                "hidden": np.asarray(model.apply(variables, ids, segment_ids=mask, return_hidden=True))}
    # RoBERTa's positions come from the padding id in `ids`, as in HF (create_position_ids_from_input_ids)
    out = model.apply(variables, ids, segment_ids=mask, token_types=jnp.asarray(token_types, jnp.int32))
    result = {"logits": np.asarray(out["mlm_logits"]), "hidden": np.asarray(out["hidden"])}
    if "nsp_logits" in out:
        result["nsp_logits"] = np.asarray(out["nsp_logits"])
    return result


def max_diff_on_tokens(a, b, mask):
    # Only real tokens are compared. At padding positions the two differ by design: HF masks only the keys,
    # so a padding query attends to the real tokens; jaxlm gives padding (segment id 0) a fully masked row,
    # i.e. a uniform average over all positions. Losses and predictions never read those positions.
    keep = mask.astype(bool)
    return float(np.abs(a[keep] - b[keep]).max())


PARITY = {}


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_logits_match_transformers_within_1e4(hf_dirs, family):
    model, model_dir = hf_dirs[family]
    config, params, tokenizer = load_hf(model_dir)
    assert config.family == family and tokenizer is not None
    ids, mask, token_types = batch_with_padding(family, config.vocab_size)
    ref = hf_outputs(family, model, ids, mask, token_types)
    got = jaxlm_outputs(family, config, params, ids, mask, token_types)
    diffs = {k: max_diff_on_tokens(got[k], ref[k], mask) for k in ("hidden", "logits")}
    if family == "bert":  # NSP reads the [CLS] position of each row, a real token in both
        diffs["nsp_logits"] = float(np.abs(got["nsp_logits"] - ref["nsp_logits"]).max())
    PARITY[family] = diffs
    print(f"\n{family} max abs diff vs transformers: {diffs}")
    assert all(d < 1e-4 for d in diffs.values()), diffs
    assert np.abs(ref["logits"]).max() > 0.1  # the comparison is between non-trivial numbers


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_scanned_and_unrolled_imports_give_the_same_logits(hf_dirs, family):
    _, model_dir = hf_dirs[family]
    config, params, _ = load_hf(model_dir)
    scanned_config, scanned_params, _ = load_hf(model_dir, scan_layers=True)
    stack = scanned_params["bert"]["encoder"] if family == "bert" else scanned_params["decoder"]
    assert scanned_config.scan_layers and "layers" in stack and "layers_0" not in stack
    ids, mask, token_types = batch_with_padding(family, config.vocab_size, seed=1)
    plain = jaxlm_outputs(family, config, params, ids, mask, token_types)
    scanned = jaxlm_outputs(family, scanned_config, scanned_params, ids, mask, token_types)
    np.testing.assert_allclose(scanned["logits"], plain["logits"], atol=1e-5)


@pytest.mark.parametrize("family,scan", [("bert", False), ("roberta", False), ("gpt2", True)])
def test_cli_round_trip_reproduces_every_tensor_exactly(hf_dirs, tmp_path, family, scan):
    model, model_dir = hf_dirs[family]
    workdir, out = str(tmp_path / "run"), str(tmp_path / "hf_out")
    assert convert_main(["from-hf", "--model_dir", model_dir, "--workdir", workdir]
                        + (["--scan_layers"] if scan else [])) == 0
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "0", "state"))
    saved = json.load(open(os.path.join(workdir, "jaxlm_config.json")))
    assert saved["model"]["family"] == family and saved["model"]["size"] is None
    assert saved["model"]["scan_layers"] is scan
    assert convert_main(["to-hf", "--workdir", workdir, "--out", out]) == 0

    # The files: same tensor names (tied copies omitted on both sides), bitwise-equal values.
    original, exported = load_file(os.path.join(model_dir, "model.safetensors")), load_file(
        os.path.join(out, "model.safetensors"))
    assert sorted(exported) == sorted(original)
    for name, value in original.items():
        assert exported[name].dtype == value.dtype and np.array_equal(exported[name], value), name
    # transformers loads it with nothing missing or unexpected, and every state-dict entry is identical.
    reloaded, info = type(model).from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    reference = model.state_dict()
    assert sorted(reloaded.state_dict()) == sorted(reference)
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    # The tokenizer travelled along: the exported directory tokenizes like the original.
    hf_tok, out_tok = (transformers.AutoTokenizer.from_pretrained(d) for d in (model_dir, out))
    assert out_tok.encode(SENTENCE) == hf_tok.encode(SENTENCE)


def test_sharded_and_pytorch_bin_checkpoints_import_the_same_params(hf_dirs, tmp_path):
    model, model_dir = hf_dirs["bert"]
    _, params, _ = load_hf(model_dir)
    sharded = str(tmp_path / "sharded")
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    # pytorch_model.bin as older transformers wrote it: the full state dict, tied copies included
    binary = str(tmp_path / "bin")
    os.makedirs(binary)
    shutil.copy(os.path.join(model_dir, "config.json"), binary)
    torch.save(model.state_dict(), os.path.join(binary, "pytorch_model.bin"))
    for directory in (sharded, binary):
        imported = import_hf(directory)
        flat = lambda tree: {k: v for k, v in _flatten(tree)}  # noqa: E731
        a, b = flat(params), flat(imported.params)
        assert sorted(a) == sorted(b)
        assert all(np.array_equal(a[k], b[k]) for k in a), directory
    assert imported.report.ignored == ["cls.predictions.decoder.bias", "cls.predictions.decoder.weight"]


def test_old_style_files_with_buffers_and_no_prefix_import_the_same_params(hf_dirs, tmp_path):
    """GPT-2 as OpenAI's conversion wrote it: no 'transformer.' prefix, causal-mask buffers, the tied lm_head."""
    _, model_dir = hf_dirs["gpt2"]
    _, params, _ = load_hf(model_dir)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(os.path.join(model_dir,
                                                                                    "model.safetensors")).items()}
    tensors.update({"h.0.attn.bias": np.tril(np.ones((1, 1, 64, 64), np.float32)), "h.1.attn.masked_bias":
                    np.full((), -1e4, np.float32), "lm_head.weight": tensors["wte.weight"]})
    shutil.copy(os.path.join(model_dir, "config.json"), tmp_path)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    imported = import_hf(str(tmp_path))
    assert imported.report.ignored == ["h.0.attn.bias", "h.1.attn.masked_bias", "lm_head.weight"]
    a, b = dict(_flatten(params)), dict(_flatten(imported.params))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    # an lm_head that is not the embedding matrix cannot be represented (jaxlm ties it): a named error
    tensors["lm_head.weight"] = tensors["wte.weight"] + 1
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="'lm_head.weight' differs from 'wte.weight'"):
        import_hf(str(tmp_path))


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", np.asarray(v)


def test_headless_checkpoints_load_the_backbone_and_report_new_heads(tmp_path):
    torch_model = make_hf_model(transformers.BertModel, _bert_config())
    torch_model.save_pretrained(tmp_path / "bert")
    imported = import_hf(str(tmp_path / "bert"), seed=3)
    assert imported.report.new == ["mlm_head/bias", "mlm_head/transform/bias", "mlm_head/transform/kernel",
                                   "mlm_head/transform_norm/bias", "mlm_head/transform_norm/scale",
                                   "nsp_head/bias", "nsp_head/kernel"]
    assert "bert/pooler/kernel" in imported.report.loaded and imported.report.unused == []
    assert np.abs(imported.params["mlm_head"]["transform"]["kernel"]).max() > 0  # initialised, not zeros
    ids, mask, token_types = batch_with_padding("bert", 128)
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          token_type_ids=torch.tensor(token_types)).last_hidden_state.numpy()
    got = jaxlm_outputs("bert", imported.config, imported.params, ids, mask, token_types)
    assert max_diff_on_tokens(got["hidden"], ref, mask) < 1e-4

    # RobertaModel: its pooler has no place in jaxlm's RoBERTa (no NSP) and is reported unused.
    make_hf_model(transformers.RobertaModel, _roberta_config()).save_pretrained(tmp_path / "roberta")
    report = import_hf(str(tmp_path / "roberta")).report
    assert report.unused == ["pooler.dense.weight", "pooler.dense.bias"]
    assert [p for p in report.new if not p.startswith("mlm_head/")] == []


def test_unknown_architecture_and_unexpected_or_missing_tensors_are_named_errors(hf_dirs, tmp_path):
    _, model_dir = hf_dirs["bert"]
    bad = str(tmp_path / "bad")
    shutil.copytree(model_dir, bad)
    config = json.load(open(os.path.join(model_dir, "config.json")))
    json.dump({**config, "model_type": "bart"}, open(os.path.join(bad, "config.json"), "w"))
    with pytest.raises(ValueError, match=r"model_type='bart'.*not supported"):
        load_hf(bad)
    json.dump(config, open(os.path.join(bad, "config.json"), "w"))

    tensors = load_file(os.path.join(model_dir, "model.safetensors"))
    save_file({**tensors, "bert.encoder.layer.0.attention.self.rotary.weight": np.ones(3, np.float32)},
              os.path.join(bad, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected tensors.*bert\.encoder\.layer\.0\.attention\.self\.rotary"):
        load_hf(bad)
    del tensors["bert.encoder.layer.1.output.dense.weight"]
    save_file(tensors, os.path.join(bad, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing tensors \['bert\.encoder\.layer\.1\.output\.dense\.weight'\]"):
        load_hf(bad)
    tensors["bert.encoder.layer.1.output.dense.weight"] = np.zeros((32, 65), np.float32)
    save_file(tensors, os.path.join(bad, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"output\.dense\.weight' \(32, 65\).*\(65, 32\).*\(64, 32\)"):
        load_hf(bad)
    os.remove(os.path.join(bad, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf(bad)


def test_a_truncated_weight_file_is_named_with_its_size(hf_dirs, tmp_path):
    """An interrupted download: safetensors' bare SafetensorError (and torch's zip error) named no file."""
    model, model_dir = hf_dirs["gpt2"]
    shutil.copy(os.path.join(model_dir, "config.json"), tmp_path)
    whole = open(os.path.join(model_dir, "model.safetensors"), "rb").read()
    (tmp_path / "model.safetensors").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match=rf"{tmp_path}/model.safetensors \({len(whole) // 2:,} bytes\) cannot be "
                                         r"read as safetensors.*interrupted download"):
        load_hf(str(tmp_path))
    os.remove(tmp_path / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    whole = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match=r"pytorch_model.bin \(.* bytes\) cannot be read as a PyTorch state dict"):
        load_hf(str(tmp_path))


def test_pytorch_bin_without_torch_is_a_clear_error(hf_dirs, tmp_path, monkeypatch):
    model, model_dir = hf_dirs["gpt2"]
    shutil.copy(os.path.join(model_dir, "config.json"), tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pytorch_model.bin needs torch"):
        load_hf(str(tmp_path))


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_tokenizer_files_encode_like_transformers(hf_dirs, tmp_path, family):
    _, model_dir = hf_dirs[family]
    hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    text = SENTENCE + (" [MASK] here" if family == "bert" else " <mask> here" if family == "roberta" else "")
    ours = load_tokenizer(model_dir, family)
    expected = hf_tok.encode(text, add_special_tokens=False)
    assert len(expected) > 5 and ours.encode(text) == expected
    assert ours.encode(text, add_special_tokens=True) == hf_tok(text)["input_ids"]
    assert ours.decode(ours.encode(SENTENCE)) == hf_tok.decode(expected[:len(ours.encode(SENTENCE))])
    if family == "bert":
        assert (ours.pad_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, 2, 3, 4)
        assert ours.word_starts(ours.encode("foxes jumps")).tolist() == [True, False, True, False]
    elif family == "roberta":
        assert (ours.bos_id, ours.pad_id, ours.eos_id, ours.mask_id, ours.cls_id, ours.sep_id) == (0, 1, 2, 4, 0, 2)
        # The released RoBERTa files declare '<mask>' with lstrip (it swallows the space before it).
        lstrip_dir = tmp_path / "lstrip"
        shutil.copytree(model_dir, lstrip_dir, ignore=shutil.ignore_patterns("*.safetensors"))
        json.dump({"tokenizer_class": "RobertaTokenizer", "mask_token": {"__type": "AddedToken",
            "content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False, "single_word": False,
            "special": True}}, open(lstrip_dir / "tokenizer_config.json", "w"))
        lstrip_expected = transformers.AutoTokenizer.from_pretrained(lstrip_dir).encode(text, add_special_tokens=False)
        assert lstrip_expected != expected and load_tokenizer(str(lstrip_dir)).encode(text) == lstrip_expected
    else:
        assert ours.eos_id == 0
        with pytest.raises(ValueError, match="no mask token"):
            ours.mask_id
    # The tokenizer.json that transformers writes today reads the same way.
    hf_tok.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path)).encode(text) == expected


def test_save_hf_from_a_native_jaxlm_model_loads_in_transformers(tmp_path):
    """A model pretrained in jaxlm (no HF config to start from) exports, sharded, and gives the same logits."""
    import jax

    from jaxlm.models import get_model_config
    from jaxlm.train.state import unbox

    config = get_model_config("bert", vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                              max_position_embeddings=32, nsp_head=False, pooler=False)
    model = build_model(config)
    params = unbox(model.init(jax.random.key(1), jnp.ones((1, 8), jnp.int32))["params"])
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), params)
    result = save_hf(config, params, str(tmp_path), max_shard_bytes=20_000)
    assert result["architecture"] == "BertForMaskedLM" and result["not_exported"] == []
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    hf = transformers.BertForMaskedLM.from_pretrained(str(tmp_path)).eval()
    ids, mask, token_types = batch_with_padding("bert", 96)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(token_types)).logits.numpy()
    got = jaxlm_outputs("bert", config, params, ids, mask, token_types)
    assert max_diff_on_tokens(got["logits"], ref, mask) < 1e-4


def test_to_hf_reads_a_pretraining_checkpoint_without_its_optimizer_state(tmp_path):
    """A workdir as jaxlm.pretrain writes it (TrainState with Adam state, the run config) exports to HF."""
    import dataclasses

    import jax
    import optax

    from jaxlm.convert import export_workdir
    from jaxlm.models import get_model_config
    from jaxlm.train import TrainState, make_checkpoint_manager, save_checkpoint
    from jaxlm.train.state import unbox

    config = get_model_config("gpt2", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                              intermediate_size=64, max_position_embeddings=16, scan_layers=True)
    params = unbox(build_model(config).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"])
    state = TrainState(step=jnp.array(7, jnp.int32), params=params, opt_state=optax.adam(1e-3).init(params),
                       rng=jnp.zeros((2,), jnp.uint32))
    manager = make_checkpoint_manager(str(tmp_path / "run"), async_save=False)
    run_config = {"model": {"family": "gpt2", "size": None, "scan_layers": True},
                  "model_config": dataclasses.asdict(config), "objective": "clm"}
    save_checkpoint(manager, 7, state, config=run_config)
    manager.wait_until_finished()
    manager.close()
    result = export_workdir(str(tmp_path / "run"), str(tmp_path / "hf"))
    assert result["step"] == 7 and result["architecture"] == "GPT2LMHeadModel"
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    ids = np.random.default_rng(0).integers(0, 64, (2, 10))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    got = np.asarray(build_model(config).apply({"params": params}, jnp.asarray(ids, jnp.int32)))
    assert np.abs(got - ref).max() < 1e-4


def write_sentence_transformers_tokenizer_json(model_dir, length=16):
    """A WordPiece tokenizer.json as released sentence-transformers checkpoints ship it: fixed padding and
    truncation baked in ("padding": {"strategy": {"Fixed": N}}, "truncation": {"max_length": N})."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    backend.enable_padding(pad_id=0, pad_token="[PAD]", length=length)
    backend.enable_truncation(max_length=length)
    backend.save(os.path.join(model_dir, "tokenizer.json"))
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": length,
                   "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                   "mask_token": "[MASK]"}, f)
    saved = json.load(open(os.path.join(model_dir, "tokenizer.json")))
    assert saved["padding"]["strategy"] == {"Fixed": length} and saved["truncation"]["max_length"] == length


def test_tokenizer_json_with_baked_padding_and_truncation_encodes_every_token(tmp_path):
    """Regression: the padding / truncation stored in a tokenizer.json are turned off on load, so ids equal
    transformers' tokenizer(text, add_special_tokens=False) on texts longer than the baked length, and features
    built from them hold no padding in the middle and keep their [SEP]."""
    from jaxlm import tasks

    write_sentence_transformers_tokenizer_json(str(tmp_path), length=16)
    ours = load_tokenizer(str(tmp_path))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    long_text = " ".join(TEXTS * 3)  # ~60 word pieces, far beyond the baked 16
    expected = hf_tok(long_text, add_special_tokens=False)["input_ids"]
    assert len(expected) > 40 and 0 not in expected
    assert ours.encode(long_text) == expected
    assert ours.encode_batch([long_text, "a dog"]) == [expected, hf_tok("a dog", add_special_tokens=False)["input_ids"]]
    assert ours.encode_with_offsets(long_text)[0] == expected

    features = tasks.classification_features([tasks.TextExample("x", "a lazy dog", "the fox", 1)], ours, max_len=12)
    row, n_real = features["inputs"][0].tolist(), int(features["segment_ids"][0].sum())
    assert row[:n_real] == [2, *ours.encode("a lazy dog"), 3, *ours.encode("the fox"), 3]
    assert row[n_real:] == [0] * (12 - n_real)
    # A SQuAD context longer than the baked 16 tokens is windowed by doc_stride, not cut at 16 first.
    context = " ".join(TEXTS * 2)
    answer = tasks.Answer("the fox", context.rindex("the fox"))
    qa = tasks.qa_features([tasks.QAExample("q", "who jumps?", context, (answer,))], ours, max_len=24, doc_stride=8,
                           max_query_len=8)
    assert len(qa["inputs"]) > 3 and qa["start_positions"].max() > 0


def test_the_converter_refuses_non_empty_targets_unless_overwrite(hf_dirs, tmp_path, capsys):
    """from-hf into a pretraining run's workdir would add a step 0 beside its steps; to-hf over another model's
    directory would mix the two. Both are errors naming the directory; --overwrite replaces / cleans."""
    _, model_dir = hf_dirs["gpt2"]
    workdir, out = tmp_path / "run", tmp_path / "hf_out"
    (workdir / "checkpoints" / "700").mkdir(parents=True)  # another run's step
    assert convert_main(["from-hf", "--model_dir", model_dir, "--workdir", str(workdir)]) == 1
    assert f"{workdir} is not empty (checkpoints" in capsys.readouterr().err
    assert os.listdir(workdir / "checkpoints") == ["700"]
    assert convert_main(["from-hf", "--model_dir", model_dir, "--workdir", str(workdir), "--overwrite"]) == 0
    assert os.listdir(workdir / "checkpoints") == ["0"]

    out.mkdir()
    stale = ["model.safetensors.index.json", "model-00001-of-00002.safetensors", "config.json"]
    for name in stale:
        (out / name).write_text("another model")
    assert convert_main(["to-hf", "--workdir", str(workdir), "--out", str(out)]) == 1
    assert "pass --overwrite to write into it" in capsys.readouterr().err
    assert (out / "config.json").read_text() == "another model"
    assert convert_main(["to-hf", "--workdir", str(workdir), "--out", str(out), "--overwrite"]) == 0
    names = sorted(os.listdir(out))
    assert "model.safetensors" in names and not any(n in names for n in stale[:2])
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
