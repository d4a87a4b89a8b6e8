"""Loss primitives (jax): weighted cross-entropy with label smoothing and z-loss, accuracy, and a chunked
LM-head cross-entropy that never materialises the [B, L, V] logits.

All sums are over weighted positions only: a weight-0 position (padding, unused prediction slot) never
contributes, whatever its logits or target (an out-of-range target like -100 is fine; NaN logits there
leave the loss value intact, but their gradient would still be NaN).
Everything is computed in float32 whatever the logits dtype.
"""
import functools

import jax
import jax.numpy as jnp


def _log_probs_parts(logits, targets):
    """float32 (log p(target), sum_v log p(v), logsumexp) per position."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1,
                                       mode="clip")[..., 0]
    sum_logits = jnp.sum(logits, axis=-1)
    vocab = logits.shape[-1]
    return target_logit - log_z, sum_logits - vocab * log_z, log_z


def _check_shapes(logits, targets, weights):
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets shape {targets.shape} must be logits shape {logits.shape} without the "
                         "last (vocab) axis")
    if weights is not None and weights.shape != targets.shape:
        raise ValueError(f"weights shape {weights.shape} != targets shape {targets.shape}")


def cross_entropy_with_logits(logits, targets, weights=None, *, label_smoothing=0.0, z_loss=0.0):
    """Weighted token cross-entropy. Returns (loss_sum, z_loss_sum, weight_sum), float32 scalars.

    loss_sum INCLUDES the z-loss term (as t5x does); z_loss_sum is that term alone, for logging.
    Label smoothing as t5x: the target gets 1 - label_smoothing and the other V-1 classes share
    label_smoothing; the entropy of that smoothed distribution is subtracted, so a perfect prediction of the
    smoothed targets scores 0 (the loss is then a KL divergence, not the plain NLL: perplexity computed from
    a smoothed loss is not the model's perplexity).
    z-loss (PaLM, t5x): z_loss * logsumexp(logits)^2, keeps the softmax normaliser near 1.
    weights None means all ones.
    """
    _check_shapes(logits, targets, weights)
    weights = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    log_p_target, sum_log_p, log_z = _log_probs_parts(logits, targets)
    if label_smoothing:
        vocab = logits.shape[-1]
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
        token_loss = -((confidence - low) * log_p_target + low * sum_log_p) - entropy
    else:
        token_loss = -log_p_target
    token_z = z_loss * jnp.square(log_z)
    real = weights != 0
    loss_sum = jnp.sum(jnp.where(real, (token_loss + token_z) * weights, 0.0))
    z_loss_sum = jnp.sum(jnp.where(real, token_z * weights, 0.0))
    return loss_sum, z_loss_sum, jnp.sum(weights)


def weighted_accuracy(logits, targets, weights=None):
    """(correct_sum, weight_sum): weighted count of positions whose target has the largest logit.

    Computed as `target_logit >= max(logits)`, not `argmax(logits) == target`: XLA CPU lowers argmax to a
    (value, index) reduce that is not vectorised (221 ms against 11 ms over GPT-2's [1024, 50257] logits;
    the GPT-2 small loss head's value-and-grad 530 -> 270 ms, benchmarks/RESULTS.md). A tie for the largest
    logit counts as correct, which only exactly equal logits can tell apart.
    """
    _check_shapes(logits, targets, weights)
    weights = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1, mode="clip")[..., 0]
    in_range = (targets >= 0) & (targets < logits.shape[-1])
    correct = in_range & (target_logit >= jnp.max(logits, axis=-1))
    return jnp.sum(jnp.where(correct & (weights != 0), weights, 0.0)), jnp.sum(weights)


def weighted_mean_cross_entropy(logits, targets, weights=None, *, label_smoothing=0.0, z_loss=0.0):
    """(mean_loss, metrics) of a language-modelling head: mean_loss = loss_sum / weight_sum (smoothed CE + z-loss,
    what is trained); metrics {'loss': that, 'lm_loss': the mean plain NLL (what perplexity is the exp of, whatever
    the smoothing and z-loss), 'z_loss', 'accuracy', 'num_tokens' (weight sum)}. A batch with no weighted token
    gives 0, not NaN."""
    loss_sum, z_loss_sum, weight_sum = cross_entropy_with_logits(
        logits, targets, weights, label_smoothing=label_smoothing, z_loss=z_loss)
    nll_sum = loss_sum - z_loss_sum
    if label_smoothing:
        nll_sum, _, _ = cross_entropy_with_logits(logits, targets, weights)
    correct_sum, _ = weighted_accuracy(logits, targets, weights)
    denom = jnp.maximum(weight_sum, 1e-8)
    mean_loss = loss_sum / denom
    metrics = {"loss": mean_loss, "lm_loss": jax.lax.stop_gradient(nll_sum / denom), "z_loss": z_loss_sum / denom,
               "accuracy": jax.lax.stop_gradient(correct_sum / denom), "num_tokens": weight_sum}
    return mean_loss, metrics


def perplexity(mean_loss):
    """exp(mean token NLL). Only meaningful for a loss without label smoothing and z-loss."""
    return jnp.exp(jnp.asarray(mean_loss, jnp.float32))


def chunked_cross_entropy(hidden_BxLxD, embedding_VxD, targets, weights=None, *, chunk_size, bias=None,
                          label_smoothing=0.0, z_loss=0.0):
    """LM-head projection (hidden @ embedding.T + bias) and cross-entropy, chunk_size tokens at a time.

    A lax.scan over chunks of the flattened token axis, with each chunk under jax.checkpoint: the forward
    keeps only one chunk's [chunk_size, V] logits alive and the backward recomputes them, so the full
    [B, L, V] logits (the largest activation of a small LM with a big vocab) never exist. Same loss and
    gradients as the plain computation. Returns (loss_sum, weight_sum, correct_sum); loss_sum includes the
    z-loss term like cross_entropy_with_logits. hidden may have any leading shape; targets is that shape.
    """
    d_model = hidden_BxLxD.shape[-1]
    if embedding_VxD.ndim != 2 or embedding_VxD.shape[1] != d_model:
        raise ValueError(f"embedding shape {embedding_VxD.shape} must be [V, D] with D = hidden's last axis "
                         f"({hidden_BxLxD.shape})")
    if targets.shape != hidden_BxLxD.shape[:-1]:
        raise ValueError(f"targets shape {targets.shape} must be hidden shape {hidden_BxLxD.shape} without D")
    if weights is not None and weights.shape != targets.shape:
        raise ValueError(f"weights shape {weights.shape} != targets shape {targets.shape}")
    if bias is not None and bias.shape != embedding_VxD.shape[:1]:
        raise ValueError(f"bias shape {bias.shape} must be [V] = {embedding_VxD.shape[:1]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    weights = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)

    hidden_NxD = hidden_BxLxD.reshape(-1, d_model)
    n_tokens = hidden_NxD.shape[0]
    chunk = min(chunk_size, max(n_tokens, 1))
    n_chunks = -(-n_tokens // chunk)
    pad = n_chunks * chunk - n_tokens  # padded tokens get weight 0
    hidden_CxKxD = jnp.pad(hidden_NxD, ((0, pad), (0, 0))).reshape(n_chunks, chunk, d_model)
    targets_CxK = jnp.pad(targets.reshape(-1), (0, pad)).reshape(n_chunks, chunk)
    weights_CxK = jnp.pad(weights.reshape(-1), (0, pad)).reshape(n_chunks, chunk)

    @functools.partial(jax.checkpoint, prevent_cse=False)  # inside scan, CSE cannot defeat remat
    def chunk_loss(h_KxD, emb_VxD, b_V, t_K, w_K):
        logits_KxV = jnp.einsum("kd,vd->kv", h_KxD, emb_VxD, preferred_element_type=jnp.float32)
        if b_V is not None:
            logits_KxV = logits_KxV + b_V.astype(jnp.float32)
        loss, _, _ = cross_entropy_with_logits(logits_KxV, t_K, w_K, label_smoothing=label_smoothing,
                                               z_loss=z_loss)
        correct, _ = weighted_accuracy(logits_KxV, t_K, w_K)
        return loss, jax.lax.stop_gradient(correct)

    def body(carry, xs):
        loss_sum, correct_sum = carry
        h_KxD, t_K, w_K = xs
        loss, correct = chunk_loss(h_KxD, embedding_VxD, bias, t_K, w_K)
        return (loss_sum + loss, correct_sum + correct), None

    zero = jnp.zeros((), jnp.float32)
    (loss_sum, correct_sum), _ = jax.lax.scan(body, (zero, zero), (hidden_CxKxD, targets_CxK, weights_CxK))
    return loss_sum, jnp.sum(weights), correct_sum


def lm_cross_entropy(forward, output_embedding, targets, weights, config):
    """(loss, {loss, lm_loss, accuracy, num_tokens}) of a language model's predictions of `targets`, the one body
    of the CLM and seq2seq losses. forward(return_hidden) runs the model: hidden states [B,L,D] for the chunked
    projection (config.logits_chunk_size > 0, output_embedding() the [V,D] matrix) or logits [B,L,V]."""
    if config.use_chunks():
        loss_sum, weight_sum, correct = chunked_cross_entropy(forward(True), output_embedding(), targets, weights,
                                                              chunk_size=config.logits_chunk_size)
        denom = jnp.maximum(weight_sum, 1e-8)
        loss = loss_sum / denom
        return loss, {"loss": loss, "lm_loss": loss, "accuracy": correct / denom, "num_tokens": weight_sum}
    loss, metrics = weighted_mean_cross_entropy(forward(False), targets, weights,
                                                label_smoothing=config.label_smoothing, z_loss=config.z_loss)
    return loss, {k: metrics[k] for k in ("loss", "lm_loss", "accuracy", "num_tokens")}
