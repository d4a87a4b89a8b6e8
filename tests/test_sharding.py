"""Mesh construction, logical-axis rules -> shardings, batch placement and distributed init."""
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxlm import sharding as shd


class Boxed(nn.Module):
    vocab: int = 64

    @nn.compact
    def __call__(self, x_BxD):
        emb = self.param("embedding", nn.with_logical_partitioning(nn.initializers.normal(), ("vocab", "embed")),
                         (self.vocab, 16))
        h = nn.Dense(32, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x_BxD)
        stack = self.param("stack", nn.with_logical_partitioning(nn.initializers.ones, ("layers", "embed", "heads")),
                           (3, 16, 4))
        plain = self.param("plain", nn.initializers.zeros, (5,))   # no annotation: replicated
        return h.sum() + emb.sum() + stack.sum() + plain.sum()


def abstract_params(vocab=64):
    return jax.eval_shape(Boxed(vocab).init, jax.random.PRNGKey(0), jnp.zeros((2, 16)))["params"]


def test_default_rules_are_the_spec_table():
    rules = dict(shd.DEFAULT_RULES)
    assert rules == {
        "batch": ("data", "fsdp"), "activation_batch": ("data", "fsdp"), "embed": "fsdp",
        "heads": "tensor", "mlp": "tensor", "vocab": "tensor", "activation_heads": "tensor",
        "activation_mlp": "tensor", "activation_vocab": "tensor", "length": None, "kv": None,
        "layers": None, "activation_length": None, "activation_embed": None}


def test_make_mesh_sizes_and_errors():
    mesh = shd.make_mesh()
    assert mesh.axis_names == ("data", "fsdp", "tensor") and dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(shd.make_mesh(2, -1, 2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(shd.MeshConfig(data=1, fsdp=4, tensor=2).make().shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    one = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    assert one.devices.size == 1
    with pytest.raises(ValueError, match=r"mesh sizes \{'data': 3, 'fsdp': 1, 'tensor': 1\} need 3 devices but 8"):
        shd.make_mesh(3, 1, 1)
    with pytest.raises(ValueError, match=r"fixed axes \(3 devices\) do not divide the 8 available"):
        shd.make_mesh(-1, 3, 1)
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        shd.make_mesh(-1, -1, 1)


def test_logical_annotations_become_mesh_shardings():
    mesh = shd.make_mesh(2, 2, 2)
    shardings = shd.logical_to_mesh_shardings(abstract_params(), mesh)
    specs = jax.tree_util.tree_map(lambda s: s.spec, shardings)
    assert specs == {"embedding": P("tensor", "fsdp"),
                     "Dense_0": {"kernel": P("fsdp", "tensor"), "bias": P("tensor")},
                     "stack": P(None, "fsdp", "tensor"), "plain": P()}
    assert all(s.mesh is mesh for s in jax.tree_util.tree_leaves(shardings))
    logical = shd.logical_partition_specs(abstract_params())
    assert logical["stack"] == P("layers", "embed", "heads")


def test_dimension_the_mesh_does_not_divide_is_replicated_with_a_warning(caplog):
    mesh = shd.make_mesh(1, 2, 4)
    with caplog.at_level(logging.WARNING, logger="jaxlm.sharding"):
        shardings = shd.logical_to_mesh_shardings(abstract_params(vocab=66), mesh)   # 66 % 4 != 0
    assert shardings["embedding"].spec == P(None, "fsdp")
    assert shardings["Dense_0"]["kernel"].spec == P("fsdp", "tensor")
    assert "['embedding']: dimension 0 of shape (66, 16) is not divisible by mesh axes ('tensor',)" in caplog.text
    with pytest.raises(ValueError, match=r"\['embedding'\]: dimension 0 of shape \(66, 16\)"):
        shd.logical_to_mesh_shardings(abstract_params(vocab=66), mesh, strict=True)
    with pytest.raises(ValueError, match=r"rules map to mesh axes \['model'\]"):
        shd.logical_to_mesh_shardings(abstract_params(), mesh, rules=(("mlp", "model"),))


def test_host_batch_becomes_a_global_array_split_over_data_and_fsdp():
    mesh = shd.make_mesh(2, 2, 2)
    batch = {"inputs": np.arange(8 * 3, dtype=np.int32).reshape(8, 3), "labels": np.arange(8, dtype=np.int32)}
    arrays = shd.host_local_to_global(batch, mesh)
    assert arrays["inputs"].sharding.spec == P(("data", "fsdp"))
    assert arrays["inputs"].shape == (8, 3)
    assert {s.data.shape for s in arrays["inputs"].addressable_shards} == {(2, 3)}   # 8 rows / (2*2)
    back = shd.global_to_host_local(arrays, mesh)
    np.testing.assert_array_equal(back["inputs"], batch["inputs"])
    np.testing.assert_array_equal(back["labels"], batch["labels"])
    with pytest.raises(ValueError, match=r"batch\['n'\] is a scalar"):
        shd.host_local_to_global({"n": np.int32(3)}, mesh)


def test_mesh_context_makes_logical_constraints_take_effect():
    mesh = shd.make_mesh(2, 2, 2)
    f = jax.jit(lambda x: nn.with_logical_constraint(x * 2, ("activation_batch", "activation_mlp")))
    x = jnp.ones((8, 6))
    assert f(x).sharding.is_fully_replicated   # no rules in scope: a no-op
    with shd.mesh_context(mesh):
        y = jax.jit(lambda x: nn.with_logical_constraint(x * 2, ("activation_batch", "activation_mlp")))(x)
    assert y.sharding.spec == P(("data", "fsdp"), "tensor")
    np.testing.assert_array_equal(np.asarray(y), 2.0)
    with shd.mesh_context(mesh, constrain_activations=False):   # rules only: constraints are no-ops
        z = jax.jit(lambda x: nn.with_logical_constraint(x * 2, ("activation_batch", "activation_mlp")))(x)
    assert z.sharding.is_fully_replicated


def test_distributed_init_is_a_no_op_for_a_single_local_process(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert shd.maybe_initialize_distributed() is False
    assert shd.maybe_initialize_distributed(num_processes=1) is False
    assert not jax.distributed.is_initialized() and jax.process_count() == 1
