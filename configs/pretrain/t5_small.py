"""T5-small (60.5M, v1.0) pretraining after Raffel et al. 2020 ("Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", JMLR 21):

- Model (section 3.1.1, sizes of section 3.7): pre-LN encoder-decoder, RMSNorm without bias, relative position
  buckets (32, up to 128) shared across layers, ReLU feed-forward, output layer tied to the embedding; small =
  6 + 6 layers, d_model 512, d_ff 2048, 8 heads of 64; dropout 0.1.
- Objective (sections 3.3.3-3.3.4): span corruption, 15% of tokens in spans of mean length 3, each span one
  sentinel; 512 input tokens -> 114 target tokens (T5's random_spans_helper).
- Data and vocabulary (sections 2.2, 2.4): C4 (`c4/en`, prepare it as array_record); a 32,000-piece
  SentencePiece model (+ 100 sentinels = 32,100 tokens, 32,128 rows in the embedding as released). Point
  config.data.tokenizer at T5's own spiece.model to use that one instead of training a new one.
- Training (section 3.1.2): 2^19 = 524,288 steps, batch 128 sequences of 512 tokens (~2^16 tokens), Adafactor,
  inverse square root schedule 1/sqrt(max(n, k)) with k = 10^4 warm-up steps, i.e. 0.01 for 10^4 steps then
  decaying (= 0.01 * sqrt(10^4 / n)). Adafactor as Mesh TF / t5x run it: decay rate 0.8, update clipping 1.0,
  updates scaled by the parameter RMS, factored second moments, no weight decay, no gradient clipping
  (optimizer.schedule='rsqrt_decay' is exactly that schedule, t5x's name for it).

Mesh: data parallel, bf16 compute.
"""
from jaxlm.config_defaults import pretrain_config

SIZE = "small"


def get_config():
    c = pretrain_config()
    c.objective = "span_corruption"
    c.model.family = "t5"
    c.model.size = SIZE
    c.model.dtype = "bfloat16"
    c.model.vocab_size = 32128
    c.data.dataset = "c4/en"
    c.data.tokenizer_vocab_size = 32100
    c.data.tokenizer_num_sentinels = 100
    c.data.seq_len = 512
    c.data.noise_density = 0.15
    c.data.mean_noise_span_length = 3.0
    c.optimizer.name = "adafactor"
    c.optimizer.learning_rate = 0.01
    c.optimizer.schedule = "rsqrt_decay"
    c.optimizer.warmup_steps = 10_000
    c.optimizer.weight_decay = 0.0
    c.optimizer.max_grad_norm = 0.0
    c.optimizer.update(adafactor_decay_rate=0.8, adafactor_clipping_threshold=1.0,
                       adafactor_multiply_by_parameter_scale=True, adafactor_factored=True)
    c.train.batch_size = 128
    c.train.num_steps = 2 ** 19
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.eval_batches = 20
    c.train.checkpoint_every = 10_000
    c.mesh.data = -1
    return c
