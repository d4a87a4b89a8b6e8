"""The real models on a mesh: the same 10 steps on (1,1,1), (8,1,1), (2,2,2), (1,4,2) give the same losses,
and the parameters are sharded as the logical-axis rules say (BERT MLM+NSP, GPT-2 CLM, XLNet two-stream PLM)."""
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from synthetic import clm_batch

from jaxlm import sharding as shd
from jaxlm.models import build_model, get_model_config
from jaxlm.objectives import get_objective, mlm, plm
from jaxlm.train import create_train_state, jit_train_step, make_train_step

VOCAB, L, B = 128, 16, 8
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
            max_position_embeddings=32)
STEPS = 10
PLM_PREDICT = 4  # targets per XLNet row
SEP, CLS = 4, 3
MESHES = {"1x1x1": (1, 1, 1), "8x1x1": (8, 1, 1), "2x2x2": (2, 2, 2), "1x4x2": (1, 4, 2)}


def batches(objective, n):
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        if objective == "clm":
            docs = [rng.integers(10, VOCAB, k) for k in rng.integers(3, 20, 24)]
            out.append(clm_batch(docs, L, B))
        elif objective == "plm":  # sentence pairs, some rows padded, as the PLM pipeline lays them out
            rows = [plm.plm_features(rng.integers(10, VOCAB, a), rng.integers(10, VOCAB, b), rng, seq_len=L,
                                     num_predict=PLM_PREDICT, sep_id=SEP, cls_id=CLS)
                    for a, b in zip(rng.integers(2, 7, B), rng.integers(2, 7, B))]
            out.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
        else:
            ids = rng.integers(10, VOCAB, (B, L))
            ids[:, 0] = 4
            out.append({**mlm.mask_batch(ids, rng, mask_id=6, vocab_size=VOCAB, special_ids=(0, 4, 5, 6),
                                         max_predictions=3),
                        "segment_ids": np.ones_like(ids), "token_types": (np.arange(L) >= L // 2) * np.ones_like(ids),
                        "positions": np.broadcast_to(np.arange(L), ids.shape).copy(),
                        "nsp_labels": rng.integers(0, 2, B)})
    return out


def run_steps(family, objective, mesh_shape, scan):
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    mesh = shd.make_mesh(*mesh_shape, devices=devices)
    fields = {k: v for k, v in TINY.items() if k != "max_position_embeddings" or family != "xlnet"}  # relative
    model = build_model(get_model_config(family, **fields, scan_layers=scan))
    tx = optax.adamw(3e-3, weight_decay=0.01)
    data = batches(objective, STEPS)
    state, layout = create_train_state(lambda rng: model.init(rng, data[0]["inputs"][:1]), tx, jax.random.key(0),
                                       mesh)
    settings = {"num_predict": PLM_PREDICT} if objective == "plm" else {}
    step = jit_train_step(make_train_step(get_objective(objective)(seq_len=L, **settings).loss_fn(model), tx), layout,
                          shd.batch_sharding(mesh), mesh)
    losses = []
    for batch in data:
        state, metrics = step(state, shd.host_local_to_global(batch, mesh))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.parametrize("family,objective,scan", [("bert", "mlm_nsp", False), ("gpt2", "clm", True),
                                                   pytest.param("xlnet", "plm", True, marks=pytest.mark.slow)])
def test_meshes_give_the_same_losses_and_params_follow_the_rules(family, objective, scan):
    _, reference = run_steps(family, objective, MESHES["1x1x1"], scan)
    assert len(set(reference)) == STEPS  # different batches, different losses
    for name in ("8x1x1", "2x2x2", "1x4x2"):
        state, losses = run_steps(family, objective, MESHES[name], scan)
        np.testing.assert_allclose(losses, reference, atol=1e-4, rtol=0, err_msg=name)
        if family == "bert":
            layer = state.params["bert"]["encoder"]["layers_0"]
            embedding = state.params["bert"]["word_embeddings"]["embedding"]
            lead = ()
        elif family == "xlnet":
            layer = state.params["xlnet"]["encoder"]["layers"]
            embedding = state.params["xlnet"]["word_embeddings"]["embedding"]
            lead = (None,)
            assert layer["attention"]["relative"]["kernel"].sharding.spec == P(*lead, "fsdp", "tensor")
        else:
            layer = state.params["decoder"]["layers"]
            embedding = state.params["token_embeddings"]["embedding"]
            lead = (None,)  # the scanned `layers` axis is never sharded
        # Rules: embed -> fsdp; heads, mlp, vocab -> tensor; kv -> None.
        # kv -> None (trailing Nones are dropped)
        assert layer["attention"]["query"]["kernel"].sharding.spec == P(*lead, "fsdp", "tensor")
        assert layer["attention"]["out"]["kernel"].sharding.spec == P(*lead, "tensor", None, "fsdp")
        assert layer["mlp"]["wi"]["kernel"].sharding.spec == P(*lead, "fsdp", "tensor")
        assert embedding.sharding.spec == P("tensor", "fsdp")
        fsdp, tensor = MESHES[name][1], MESHES[name][2]
        shard = layer["mlp"]["wi"]["kernel"].addressable_shards[0].data.shape
        assert shard[-2:] == (32 // fsdp, 64 // tensor)
