"""T5 <-> Hugging Face: encoder states and LM logits of both variants (v1.0 tied + relu, v1.1 untied + gated-GELU)
match transformers within 1e-4 with padding in the batch; exact round trips; the spiece.model travels along.

Tiny random HF models built from config objects and saved locally; nothing is downloaded.
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="HF parity tests compare against transformers' PyTorch models")
transformers = pytest.importorskip("transformers", reason="HF parity tests need transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from jaxlm.convert import import_hf, load_hf, save_hf  # noqa: E402
from jaxlm.convert.__main__ import main as convert_main  # noqa: E402
from jaxlm.data import Tokenizer, train_tokenizer  # noqa: E402
from jaxlm.data.corpus import pydoc_documents  # noqa: E402
from jaxlm.layers import relative_position_bucket  # noqa: E402
from jaxlm.models import build_model, count_params  # noqa: E402

VOCAB = 160  # the tokenizer's 150 pieces (10 of them sentinels), padded as T5 pads its 32,100 to 32,128
VARIANTS = {  # family -> HF config fields
    "t5": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "t5_v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def hf_config(family):
    return transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
                                 num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 decoder_start_token_id=0, **VARIANTS[family])


def make_hf_model(family, model_cls=None, seed=0):
    """Random weights, norms and the relative bias tables included; v1.1 gets its own lm_head (transformers >= 5
    ties it to the embedding in memory until it is given a different tensor, as the released files hold)."""
    torch.manual_seed(seed)
    model = (model_cls or transformers.T5ForConditionalGeneration)(hf_config(family)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if family == "t5_v1_1" and hasattr(model, "lm_head"):
            model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 0.2)
    return model


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    texts = [text for _, text in pydoc_documents()][:60]
    prefix = tmp_path_factory.mktemp("sp") / "sp"
    tok = train_tokenizer(iter(texts), prefix, vocab_size=150, num_sentinels=10)
    return str(prefix) + ".model", tok


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, spiece):
    out = {}
    for family in VARIANTS:
        model = make_hf_model(family)
        model_dir = str(tmp_path_factory.mktemp(family))
        model.save_pretrained(model_dir)
        shutil.copy(spiece[0], os.path.join(model_dir, "spiece.model"))
        out[family] = (model, model_dir)
    return out


def padded_batch(seed=0):
    """Encoder rows of 12 tokens, the second ending in 4 padding tokens; decoder rows of 6 from the start id 0."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(4, VOCAB, (2, 12))
    mask = np.ones_like(enc)
    mask[1, 8:] = 0
    enc[1, 8:] = 0
    dec = rng.integers(4, VOCAB, (2, 6))
    dec[:, 0] = 0
    return enc, mask, dec


def hf_outputs(model, enc, mask, dec):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(dec))
    return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


def jaxlm_outputs(config, params, enc, mask, dec):
    model = build_model(config)
    forward = jax.jit(lambda p, e, m, d: (model.apply({"params": p}, e, m, method=model.encode),
                                          model.apply({"params": p}, e, d, encoder_segment_ids=m)))
    encoded, logits = forward(params, *(jnp.asarray(x, jnp.int32) for x in (enc, mask, dec)))
    return np.asarray(encoded), np.asarray(logits)


@pytest.mark.parametrize("family", list(VARIANTS))
def test_encoder_states_and_logits_match_transformers_within_1e4(hf_dirs, spiece, family):
    model, model_dir = hf_dirs[family]
    config, params, tokenizer = load_hf(model_dir)
    assert config.family == family and config.decoder_layers == 3
    assert config.tie_word_embeddings is (family == "t5") and ("lm_head" in params) is (family == "t5_v1_1")
    enc, mask, dec = padded_batch()
    ref_encoded, ref_logits = hf_outputs(model, enc, mask, dec)
    encoded, logits = jaxlm_outputs(config, params, enc, mask, dec)
    # HF's padding queries attend to the real tokens, jaxlm's are masked: compare the real encoder positions
    # (every decoder position is real; cross-attention masks the padded keys in both)
    diffs = {"encoder_hidden": float(np.abs(encoded - ref_encoded)[mask.astype(bool)].max()),
             "logits": float(np.abs(logits - ref_logits).max())}
    print(f"\n{family} max abs diff vs transformers: {diffs}")
    assert all(d < 1e-4 for d in diffs.values()), diffs
    assert np.abs(ref_logits).max() > 0.1 and np.abs(ref_encoded).max() > 0.1
    # the sentencepiece model came along, sentinels included
    assert isinstance(tokenizer, Tokenizer) and tokenizer.sentinel_ids == spiece[1].sentinel_ids
    text = "The class statement defines a new object."
    assert tokenizer.encode(text) == spiece[1].encode(text) and len(tokenizer.encode(text)) > 5


def test_parameter_counts_and_relative_buckets_agree_with_transformers():
    for family in VARIANTS:
        model = make_hf_model(family)
        config, params, _ = load_hf_from_model(model)
        hf_count = sum(p.numel() for p in model.parameters())  # v1.1: its separate lm_head included
        assert count_params(params) == hf_count == {"t5": 53_792, "t5_v1_1": 66_592}[family]
    from transformers.models.t5.modeling_t5 import T5Attention

    distances = torch.arange(-300, 300)
    for bidirectional in (True, False):
        for buckets, max_distance in ((32, 128), (8, 16)):
            ref = T5Attention._relative_position_bucket(distances, bidirectional=bidirectional,
                                                        num_buckets=buckets, max_distance=max_distance).numpy()
            got = relative_position_bucket(jnp.asarray(distances.numpy()), bidirectional=bidirectional,
                                           num_buckets=buckets, max_distance=max_distance)
            np.testing.assert_array_equal(np.asarray(got), ref)


def load_hf_from_model(model, tmp=[]):  # noqa: B006  (one scratch directory per test session)
    import tempfile

    if not tmp:
        tmp.append(tempfile.mkdtemp())
    directory = os.path.join(tmp[0], str(len(os.listdir(tmp[0]))))
    model.save_pretrained(directory)
    return load_hf(directory)


def _assert_same_files_and_state(model, model_dir, out):
    original = load_file(os.path.join(model_dir, "model.safetensors"))
    exported = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(exported) == sorted(original)
    for name, value in original.items():
        assert exported[name].dtype == value.dtype and np.array_equal(exported[name], value), name
    reloaded, info = type(model).from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    reference = model.state_dict()
    assert sorted(reloaded.state_dict()) == sorted(reference)
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    assert reloaded.config.scale_decoder_outputs == model.config.scale_decoder_outputs
    with open(os.path.join(model_dir, "spiece.model"), "rb") as a, open(os.path.join(out, "spiece.model"), "rb") as b:
        assert a.read() == b.read()


def test_cli_round_trip_of_v1_1_scanned_is_exact(hf_dirs, tmp_path):
    model, model_dir = hf_dirs["t5_v1_1"]
    workdir, out = str(tmp_path / "run"), str(tmp_path / "hf_out")
    assert convert_main(["from-hf", "--model_dir", model_dir, "--workdir", workdir, "--scan_layers"]) == 0
    saved = json.load(open(os.path.join(workdir, "jaxlm_config.json")))
    assert saved["model"]["family"] == "t5_v1_1" and saved["model"]["scan_layers"] is True
    assert os.path.exists(os.path.join(workdir, "tokenizer", "spiece.model"))
    assert convert_main(["to-hf", "--workdir", workdir, "--out", out]) == 0
    _assert_same_files_and_state(model, model_dir, out)
    assert "lm_head.weight" in load_file(os.path.join(out, "model.safetensors"))


def test_save_hf_round_trip_of_v1_0_scanned_is_exact_and_matches_transformers(hf_dirs, tmp_path):
    model, model_dir = hf_dirs["t5"]
    scanned_config, scanned_params, _ = load_hf(model_dir, scan_layers=True)
    assert sorted(scanned_params["decoder"]) == ["layers"]
    assert scanned_params["decoder"]["layers"]["attention"]["query"]["kernel"].shape == (3, 32, 4, 8)
    assert scanned_params["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (2, 32, 4, 8)
    result = save_hf(scanned_config, scanned_params, str(tmp_path), tokenizer_dir=model_dir)
    assert result["architecture"] == "T5ForConditionalGeneration" and result["not_exported"] == []
    _assert_same_files_and_state(model, model_dir, str(tmp_path))
    enc, mask, dec = padded_batch(1)
    assert np.abs(jaxlm_outputs(scanned_config, scanned_params, enc, mask, dec)[1]
                  - hf_outputs(model, enc, mask, dec)[1]).max() < 1e-4


def test_t5model_old_style_files_and_encoder_only_checkpoints(hf_dirs, tmp_path):
    # T5Model (no lm_head): v1.1's output layer becomes the shared embedding, as transformers ties it.
    _, v11_dir = hf_dirs["t5_v1_1"]
    tensors = load_file(os.path.join(v11_dir, "model.safetensors"))
    headless = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    directory = tmp_path / "t5model"
    directory.mkdir()
    shutil.copy(os.path.join(v11_dir, "config.json"), directory)
    # old files also hold the tied embedding copies and the unused decoder cross-attention bias table
    headless.update({"encoder.embed_tokens.weight": headless["shared.weight"],
                     "decoder.embed_tokens.weight": headless["shared.weight"],
                     "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight":
                         np.zeros((8, 4), np.float32)})
    save_file(headless, str(directory / "model.safetensors"), metadata={"format": "pt"})
    imported = import_hf(str(directory))
    np.testing.assert_array_equal(imported.params["lm_head"]["kernel"], tensors["shared.weight"].T)
    assert imported.report.new == [] and imported.report.unused == []
    assert imported.report.ignored == ["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
                                       "decoder.embed_tokens.weight", "encoder.embed_tokens.weight"]
    # a tied copy that differs from shared.weight cannot be represented
    headless["decoder.embed_tokens.weight"] = headless["shared.weight"] + 1
    save_file(headless, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="'decoder.embed_tokens.weight' differs from 'shared.weight'"):
        import_hf(str(directory))
    # encoder-only checkpoints are named, not half-imported
    config = json.load(open(os.path.join(v11_dir, "config.json")))
    json.dump({**config, "architectures": ["T5EncoderModel"]}, open(directory / "config.json", "w"))
    with pytest.raises(ValueError, match="T5EncoderModel.*holds no decoder"):
        import_hf(str(directory))


def test_appended_sentinels_match_t5tokenizer(tmp_path):
    """Released T5 spiece.model files have no <extra_id_*> pieces: T5Tokenizer appends 100 ids after them, and so
    does jaxlm's Tokenizer for a model directory whose tokenizer_config.json says extra_ids (span corruption can
    then continue pretraining an imported T5 with its own vocabulary)."""
    transformers = pytest.importorskip("transformers")
    texts = [text for _, text in pydoc_documents()][:60]
    train_tokenizer(iter(texts), tmp_path / "sp", vocab_size=150)  # no sentinels of its own
    model_dir = tmp_path / "t5tok"
    model_dir.mkdir()
    shutil.copy(tmp_path / "sp.model", model_dir / "spiece.model")
    (model_dir / "tokenizer_config.json").write_text('{"extra_ids": 100}')
    from jaxlm.data import load_tokenizer

    ours = load_tokenizer(str(model_dir), "t5")
    theirs = transformers.T5Tokenizer.from_pretrained(str(model_dir))
    assert ours.vocab_size == len(theirs) == 250
    expected = [theirs.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(100)]
    assert list(ours.sentinel_ids) == expected and expected[0] == 249 and expected[99] == 150
    assert [ours.piece_to_id(f"<extra_id_{i}>") for i in (0, 7)] == expected[:1] + expected[7:8]
    text = "The class statement defines a new object."
    ids = ours.encode("The class") + [ours.sentinel_ids[0]] + ours.encode("a new object.") + [ours.sentinel_ids[1]]
    assert ours.decode(ids) == theirs.decode(ids, clean_up_tokenization_spaces=False)
    assert ours.id_to_piece(expected[3]) == "<extra_id_3>" and ours.encode(text) == theirs.encode(text)[:-1]
    assert ours.word_starts(np.array(ids)).shape == (len(ids),)
