"""Next-token choice: temperature, top-k and top-p (nucleus) filtering, in that order (as Hugging Face does)."""
import jax
import jax.numpy as jnp


def filter_logits(logits_BxV, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Logits divided by `temperature`, with -inf outside the allowed set.

    top_k > 0 keeps the k largest logits (ties at the k-th value are kept too). top_p < 1 then keeps the smallest
    set of most likely tokens whose probability reaches top_p: a token stays when the mass of the tokens strictly
    ahead of it in the sorted order is below top_p, so the most likely token always stays.
    """
    logits_BxV = logits_BxV.astype(jnp.float32) / temperature
    if top_k > 0 and top_k < logits_BxV.shape[-1]:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        mass_ahead_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
        keep_BxV = mass_ahead_BxV < top_p
        num_kept_B = jnp.maximum(keep_BxV.sum(-1), 1)
        threshold_Bx1 = jnp.take_along_axis(sorted_BxV, num_kept_B[:, None] - 1, axis=-1)
        logits_BxV = jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)
    return logits_BxV


def sample(key, logits_BxV, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """One token per row drawn from the filtered distribution."""
    filtered = filter_logits(logits_BxV, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
