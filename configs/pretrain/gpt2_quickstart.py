"""Quickstart for causal LM: a 4-layer GPT-2 on the embedded corpus (CPython's reference manual), offline.

A few minutes on 2 CPU cores. Documents are packed into rows with segment ids, so no token attends across
a document boundary and positions restart per document.
"""
from jaxlm.config_defaults import pretrain_config


def get_config():
    c = pretrain_config()
    c.objective = "clm"
    c.model.family = "gpt2"
    c.model.size = ""
    c.model.update(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024, max_position_embeddings=256)
    c.data.dataset = "jaxlm_pydoc"
    c.data.tokenizer_vocab_size = 2000
    c.data.tokenizer_model_type = "bpe"
    c.data.seq_len = 128
    c.loss.logits_chunk_size = 0
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.schedule = "cosine"
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 0.1
    c.train.batch_size = 16
    c.train.num_steps = 500
    c.train.eval_every = 250
    c.train.eval_batches = 8
    c.train.checkpoint_every = 250
    return c
