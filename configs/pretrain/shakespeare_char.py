"""nanoGPT's shakespeare_char on CPU, as its README runs it: a character-level GPT (4 layers, 4 heads, width 128,
context 64, batch 12, 2000 iterations, no dropout) on Tiny Shakespeare (../shared/data/tinyshakespeare/input.txt).

Recipe: nanoGPT's config/train_shakespeare_char.py (lr 1e-3 decayed to 1e-4 by a cosine over 2000 steps after 100
warmup steps, AdamW beta2 0.99, weight decay 0.1, gradient clipping 1.0) with the README's CPU overrides
(`--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0`; the README reports a validation loss of about 1.88 there). The tokenizer is the corpus's 65
characters (`data.tokenizer='chars'`: newlines stay newlines). The split is nanoGPT's: the first 90% of the
characters train, the last 10% validate (`data.validation_split='tail'`). Documents are the play's blank-line
separated speeches of each part, packed into rows with segment ids (so, unlike nanoGPT's one stream, no position
attends across two speeches, and one end-of-document token stands for the blank line between them).

Evaluation differs from nanoGPT's `estimate_loss` (the mean loss of 20 random 12 x 64 windows of the validation
text) in what it averages: the token-weighted mean over one pass of the whole validation split, packed as in
training, at steps 1000 and 2000 (`train.eval_batches=0`). Ten steps run per compiled call (`train.steps_per_call`).

    python -m jaxlm.pretrain --config=configs/pretrain/shakespeare_char.py --workdir=runs/shakespeare_char
    python -m jaxlm.generate --checkpoint=runs/shakespeare_char --prompt "ROMEO:" --max_new_tokens=200 \\
        --strategy=sample --top_k=200 --temperature=0.8
"""
from jaxlm.config_defaults import pretrain_config, shared_data


def get_config():
    c = pretrain_config()
    c.objective = "clm"
    c.model.family = "gpt2"
    c.model.size = ""
    c.model.update(num_layers=4, hidden_size=128, num_heads=4, intermediate_size=512, max_position_embeddings=64,
                   dropout=0.0, attention_dropout=0.0)  # nanoGPT's --dropout=0.0 turns off both
    c.data.dataset = "text_files"
    c.data.text_files = shared_data("tinyshakespeare", "input.txt")
    c.data.document_separator = "blank_line"
    c.data.validation_split = "tail"  # nanoGPT's split: the first 90% of the characters train, the last 10% validate
    c.data.validation_percent = 10.0
    c.data.tokenizer = "chars"
    c.data.seq_len = 64
    c.optimizer.learning_rate = 1e-3
    c.optimizer.end_learning_rate = 1e-4
    c.optimizer.warmup_steps = 100
    c.optimizer.schedule = "cosine"
    c.optimizer.b2 = 0.99
    c.optimizer.weight_decay = 0.1
    c.optimizer.max_grad_norm = 1.0
    c.train.batch_size = 12
    c.train.num_steps = 2000
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.train.eval_batches = 0  # the whole validation split (nanoGPT's estimate_loss: 20 random batches of it)
    c.train.checkpoint_every = 1000
    c.train.steps_per_call = 10  # at this size the step is short: 10 steps per compiled call (a scan)
    c.train.prefetch_batches = 2  # the next calls' batches read and put on the device by a background thread
    return c
