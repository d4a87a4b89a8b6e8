"""Every objective can memorise one fixed batch: the models, masks and losses are wired to learn."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from synthetic import clm_batch

from jaxlm.models import build_model, get_model_config
from jaxlm.objectives import get_objective, mlm

VOCAB = 211
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def fixed_batches():
    rng = np.random.default_rng(0)
    docs = [rng.integers(10, VOCAB, n) for n in (9, 14, 6, 20, 11, 8)]
    ids = rng.integers(10, VOCAB, (4, 24))
    ids[:, 0], ids[:, -1] = 4, 5  # [CLS] ... [SEP]
    masked = mlm.mask_batch(ids, rng, mask_id=6, vocab_size=VOCAB, special_ids=(0, 4, 5, 6), max_predictions=5)
    mlm_batch = {**masked, "segment_ids": np.ones_like(ids), "token_types": np.zeros_like(ids),
                 "positions": np.broadcast_to(np.arange(24), ids.shape).copy(),
                 "nsp_labels": np.array([0, 1, 0, 1])}
    return {"clm": clm_batch(docs, 24, 2), "mlm": mlm_batch, "mlm_nsp": mlm_batch}


@pytest.mark.parametrize("family,objective", [("gpt2", "clm"), ("bert", "mlm"), ("bert", "mlm_nsp")])
def test_200_adam_steps_bring_the_loss_below_10_percent_of_the_start(family, objective):
    extra = dict(dropout=0.0, attention_dropout=0.0) if family == "gpt2" else dict(hidden_dropout=0.0,
                                                                                   attention_dropout=0.0)
    model = build_model(get_model_config(family, **TINY, **extra))
    batch = jax.tree.map(jnp.asarray, fixed_batches()[objective])
    params = model.init(jax.random.key(0), batch["inputs"])["params"]
    loss_fn = get_objective(objective)(seq_len=24).loss_fn(model)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, None)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(200):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    final, _ = loss_fn(params, batch, None)
    assert losses[0] > 0.9 * np.log(VOCAB)  # starts near chance
    assert float(final) < 0.1 * losses[0], (losses[0], float(final))
