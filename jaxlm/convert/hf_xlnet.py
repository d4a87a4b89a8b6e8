"""XLNet <-> Hugging Face: config.json fields both ways and the parameter table of XLNetLMHeadModel.

Rows read `HF tensor name -> (jaxlm path, transform)` as in jaxlm.convert.hf_tables; jaxlm paths are the
unrolled layout of jaxlm.models.xlnet.XLNetLMHeadModel (`xlnet/encoder/layers_{i}`).

HF's XLNetRelativeAttention stores q, k, v, r as [D, H, K] einsum weights ("ibh,hnd->ibnd"), which is jaxlm's
HeadsProjection kernel as it is (COPY); o is [D, H, K] too but used as "ibnd,hnd->ibh", so jaxlm's output
kernel [H, K, D] is its transpose (OUT_HEADS). The feed-forward is torch Linear (LINEAR).

untie_r=False: transformers has no shared bias tensors (XLNetRelativeAttention always owns per-layer r_w_bias,
r_r_bias, r_s_bias, whatever config.json's untie_r says), so every layer's tensor maps to the one shared jaxlm
bias: export writes N identical copies (a file transformers loads and computes the same function with), and
`to_jaxlm` checks that the copies agree.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxlm.convert.hf_tables import (
    COPY,
    HF_TO_JAXLM_ACTIVATION,
    JAXLM_TO_HF_ACTIVATION,
    LINEAR,
    HFFamily,
    Row,
    Table,
    Transform,
)
from jaxlm.layers import stack_layers, unstack_layers
from jaxlm.layers.relative_attention import BIAS_NAMES
from jaxlm.models.common import unbox
from jaxlm.models.xlnet import XLNetConfig, XLNetLMHeadModel

ARCHITECTURE = "XLNetLMHeadModel"

# HF o [D, H, K] <-> jaxlm attention/out/kernel [H, K, D]
OUT_HEADS = Transform("transpose_out_heads", lambda x, d: [np.transpose(x, (1, 2, 0))],
                      lambda xs, d: np.transpose(xs[0], (2, 0, 1)))

_T, _J = "transformer.layer.{i}", "xlnet/encoder/layers_{i}"
EMBEDDINGS = {
    "transformer.word_embedding.weight": "xlnet/word_embeddings/embedding",
    "transformer.mask_emb": "xlnet/mask_emb",
    "lm_loss.bias": "lm_bias",
}
LAYER = {
    f"{_T}.rel_attn.q": (f"{_J}/attention/query/kernel", COPY),
    f"{_T}.rel_attn.k": (f"{_J}/attention/key/kernel", COPY),
    f"{_T}.rel_attn.v": (f"{_J}/attention/value/kernel", COPY),
    f"{_T}.rel_attn.r": (f"{_J}/attention/relative/kernel", COPY),
    f"{_T}.rel_attn.o": (f"{_J}/attention/out/kernel", OUT_HEADS),
    f"{_T}.rel_attn.seg_embed": (f"{_J}/attention/seg_embed", COPY),
    f"{_T}.rel_attn.layer_norm.weight": (f"{_J}/attention_norm/scale", COPY),
    f"{_T}.rel_attn.layer_norm.bias": (f"{_J}/attention_norm/bias", COPY),
    f"{_T}.ff.layer_1.weight": (f"{_J}/mlp/wi/kernel", LINEAR),
    f"{_T}.ff.layer_1.bias": (f"{_J}/mlp/wi/bias", COPY),
    f"{_T}.ff.layer_2.weight": (f"{_J}/mlp/wo/kernel", LINEAR),
    f"{_T}.ff.layer_2.bias": (f"{_J}/mlp/wo/bias", COPY),
    f"{_T}.ff.layer_norm.weight": (f"{_J}/mlp_norm/scale", COPY),
    f"{_T}.ff.layer_norm.bias": (f"{_J}/mlp_norm/bias", COPY),
}
# alias -> source: the output layer is the word embedding (transformers >= 5 omits lm_loss.weight from files)
TIED = {"lm_loss.weight": "transformer.word_embedding.weight"}


def bias_path(config: XLNetConfig, name: str) -> str:
    """Where r_w_bias / r_r_bias / r_s_bias live: per layer (untie_r) or once at the top of the backbone."""
    return f"{_J}/attention/{name}" if config.untie_r else f"xlnet/{name}"


def table(config: XLNetConfig) -> list[Row]:
    """Every HF tensor of XLNetLMHeadModel (tied alias excluded, see TIED) with its jaxlm path and transform."""
    rows = [Row(hf, (path,), COPY) for hf, path in EMBEDDINGS.items()]
    layer = dict(LAYER)
    layer.update({f"{_T}.rel_attn.{name}": (bias_path(config, name), COPY) for name in BIAS_NAMES})
    for i in range(config.num_layers):
        rows += [Row(hf.format(i=i), (path.format(i=i),), transform) for hf, (path, transform) in layer.items()]
    return rows


def dims(config: XLNetConfig) -> dict:
    return {"H": config.num_heads, "K": config.head_dim, "D": config.hidden_size}


# ---------------------------------------------------------------------------------------------------------
# Weights

def _abstract_params(config: XLNetConfig) -> dict:
    """Flat {path: ShapeDtypeStruct} of the unrolled model, without allocating anything."""
    model = XLNetLMHeadModel(dataclasses.replace(config, scan_layers=False))
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((2, 4), jnp.int32)))["params"]
    return flatten_dict(unbox(boxed), sep="/")


def to_jaxlm(state_dict: dict, config: XLNetConfig) -> dict:
    """HF XLNetLMHeadModel state dict (name -> array) -> jaxlm params (nested float32 numpy; scanned layout when
    config.scan_layers). Unknown or missing tensors, wrong shapes and untie_r=False copies that disagree are
    errors naming the tensors."""
    named = {name: np.asarray(value) for name, value in state_dict.items()}
    for alias, source in TIED.items():
        if alias not in named:
            continue
        value = named.pop(alias)
        if source not in named:  # only the tied copy was saved: it is the parameter
            named[source] = value
        elif value.shape != named[source].shape or not np.array_equal(value, named[source]):
            raise ValueError(f"{alias!r} differs from {source!r}, but jaxlm ties the output layer to the word "
                             "embedding (an untied output layer is not supported)")
    abstract = _abstract_params(config)
    flat, source_of, missing = {}, {}, []
    for row in table(config):
        if row.hf not in named:
            missing.append(row.hf)
            continue
        value = named.pop(row.hf)
        (array,) = row.transform.to_jax(value, dims(config))
        (path,) = row.jax
        if array.shape != abstract[path].shape:
            raise ValueError(f"{row.hf!r} {value.shape} gives jaxlm {path} shape {array.shape} (transform "
                             f"{row.transform.name}) but the config's model has {abstract[path].shape}")
        array = np.asarray(array, np.float32)
        if path in flat and not np.array_equal(flat[path], array):
            raise ValueError(f"{row.hf!r} differs from {source_of[path]!r}, but untie_r=False shares one {path}; "
                             "import with untie_r=True (transformers keeps per-layer biases)")
        flat[path], source_of[path] = array, row.hf
    if named:
        raise ValueError(f"unexpected tensors not in the XLNet table: {sorted(named)}")
    if missing:
        raise ValueError(f"missing tensors: {missing}")
    params = unflatten_dict(flat, sep="/")
    return stack_layers(params, config.num_layers) if config.scan_layers else params


def to_hf(params: dict, config: XLNetConfig, *, include_tied: bool = True, dtype=np.float32) -> dict:
    """jaxlm params (either layout) -> HF XLNetLMHeadModel tensors (name -> numpy), `include_tied`: with
    lm_loss.weight, as model.state_dict() has it (transformers >= 5 leaves it out of the files it writes)."""
    params = jax.tree.map(np.asarray, params)
    if "layers" in params["xlnet"]["encoder"]:
        params = unstack_layers(params, None)
    flat = flatten_dict(params, sep="/")
    tensors = {}
    for row in table(config):
        missing = [p for p in row.jax if p not in flat]
        if missing:
            raise ValueError(f"jaxlm params {missing} (for HF {row.hf!r}) are not in the params")
        tensors[row.hf] = np.ascontiguousarray(row.transform.to_hf([flat[p] for p in row.jax], dims(config)),
                                               dtype=dtype)
    if include_tied:
        tensors.update({alias: tensors[source].copy() for alias, source in TIED.items()})
    return tensors


# ---------------------------------------------------------------------------------------------------------
# config.json

# HF XLNetConfig's defaults, for keys a config.json leaves out
HF_DEFAULTS = dict(vocab_size=32000, d_model=1024, n_layer=24, n_head=16, d_inner=4096, ff_activation="gelu",
                   untie_r=True, attn_type="bi", initializer_range=0.02, layer_norm_eps=1e-12, dropout=0.1,
                   mem_len=512, reuse_len=None, bi_data=False, clamp_len=-1, same_length=False, pad_token_id=5)


def fields_from_hf(hf_config: dict) -> dict:
    """config.json -> XLNetConfig fields. What jaxlm lacks (attn_type 'uni', an untied output layer, an unknown
    activation) is a ValueError naming the key."""
    g = lambda key: hf_config.get(key, HF_DEFAULTS.get(key))  # noqa: E731
    if hf_config.get("model_type", "xlnet") != "xlnet":
        raise ValueError(f"config.json: model_type={hf_config.get('model_type')!r} is not 'xlnet'")
    if g("attn_type") != "bi":
        raise ValueError(f"config.json: attn_type={g('attn_type')!r} is not supported (causal XLNet attention); "
                         "jaxlm needs 'bi'")
    if hf_config.get("tie_word_embeddings", True) is False:
        raise ValueError("config.json: tie_word_embeddings=false is not supported (jaxlm ties lm_loss to the word "
                         "embedding)")
    activation = g("ff_activation")
    if not isinstance(activation, str) or activation not in HF_TO_JAXLM_ACTIVATION:
        raise ValueError(f"config.json: ff_activation={activation!r} has no jaxlm equivalent; supported: "
                         f"{sorted(HF_TO_JAXLM_ACTIVATION)}")
    d_model, n_head = g("d_model"), g("n_head")
    return dict(
        vocab_size=g("vocab_size"), hidden_size=d_model, num_layers=g("n_layer"), num_heads=n_head,
        head_dim=hf_config.get("d_head") or d_model // n_head, intermediate_size=g("d_inner"),
        ff_activation=HF_TO_JAXLM_ACTIVATION[activation], untie_r=bool(g("untie_r")), attn_type="bi",
        mem_len=g("mem_len"), reuse_len=g("reuse_len"), bi_data=bool(g("bi_data")), clamp_len=g("clamp_len"),
        same_length=bool(g("same_length")), dropout=g("dropout"), layer_norm_eps=g("layer_norm_eps"),
        initializer_range=g("initializer_range"),
        pad_token_id=g("pad_token_id") if g("pad_token_id") is not None else 5)


def hf_config_from_fields(config: XLNetConfig, base: dict | None = None) -> dict:
    """XLNetConfig -> config.json of XLNetLMHeadModel; `base` (the imported config.json) keeps the keys jaxlm
    does not model (token ids, summary_* of the task heads, use_mems_*...)."""
    if config.head_dim * config.num_heads != config.hidden_size:
        raise ValueError(f"head_dim={config.head_dim} x num_heads={config.num_heads} != hidden_size="
                         f"{config.hidden_size}: transformers' XLNet needs d_head = d_model // n_head")
    out = dict(base or {})
    theirs = out.get("ff_activation")
    activation = theirs if HF_TO_JAXLM_ACTIVATION.get(theirs) == config.ff_activation else \
        JAXLM_TO_HF_ACTIVATION[config.ff_activation]
    out.update(
        model_type="xlnet", vocab_size=config.vocab_size, d_model=config.hidden_size, n_layer=config.num_layers,
        n_head=config.num_heads, d_head=config.head_dim, d_inner=config.intermediate_size, ff_activation=activation,
        untie_r=config.untie_r, attn_type=config.attn_type, mem_len=config.mem_len, reuse_len=config.reuse_len,
        bi_data=config.bi_data, clamp_len=config.clamp_len, same_length=config.same_length, dropout=config.dropout,
        layer_norm_eps=config.layer_norm_eps, initializer_range=config.initializer_range,
        pad_token_id=config.pad_token_id, architectures=[ARCHITECTURE], tie_word_embeddings=True)
    return out


# ---------------------------------------------------------------------------------------------------------
# The HFFamily entry (registered in jaxlm.convert.hf_registry). Note hf.py's importer does not compare
# untie_r=False's per-layer copies; to_jaxlm does.

def _family_table(family: str, config: XLNetConfig) -> Table:
    return Table(tuple(table(config)), (), dict(TIED), "transformer", ("lm_loss.",))


XLNET_HF = HFFamily(
    table=_family_table, fields_from_hf=lambda hf_config: ("xlnet", fields_from_hf(hf_config)),
    config_json=lambda config, architecture, base: {**hf_config_from_fields(config, base),
                                                    "architectures": [architecture]},
    export=lambda config: (config, ARCHITECTURE), dims=dims)
