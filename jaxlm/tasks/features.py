"""Examples -> fixed-shape numpy features, and batches of them.

A feature set is a dict of numpy arrays that share the leading dimension N (one row per model input; a QA
example or a long sentence can give several rows). Every set has the model inputs of jaxlm's batch format and
bookkeeping:

    inputs, segment_ids, positions, token_types   [N, L] int32  (segment_ids: 1 on real tokens, 0 on padding)
    example_index                                  [N]    int32  (which example the row came from)
    example_weights                                [N]    float32 (1; 0 on the padding rows iterate_batches adds)

plus the task's targets:

    classification:        labels [N] int32           regression: labels [N] float32
    token classification:  labels, label_weights, word_ids [N, L] (word_ids: -1 on special tokens and padding)
    extractive QA:         start_positions, end_positions [N] int32 (0 = the first token when the answer is not in
                           the window), token_offsets [N, L, 2] int32 (character span of each context token in
                           the context, -1 elsewhere), max_context [N, L] bool (the window where the token has the
                           most context on both sides: the one whose prediction counts, as in BERT's run_squad)
    text-to-text:          see seq2seq_features (the pretraining batch formats of span corruption and CLM)

`style` says how special tokens wrap the texts (the backbone's convention):

    bert     [CLS] a [SEP] b [SEP]       token_types 0 for a, 1 for b
    roberta  <s> a </s> </s> b </s>      token_types all 0
    gpt2     a <eos> b                   no [CLS]; token_types all 0 (classification heads read the last token)
    xlnet    a <sep> b <sep> <cls>       token_types 0 for a, 1 for b, 2 for <cls> (XLNet's layout: heads read
                                         the last token)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxlm.tasks.readers import QAExample, Seq2SeqExample, TextExample, TokenExample

STYLES = ("bert", "roberta", "gpt2", "xlnet")
MODEL_INPUT_KEYS = ("inputs", "segment_ids", "positions", "token_types")


# ----------------------------------------------------------------------------------------------------------------
# Special tokens and encoding with character offsets
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SequenceLayout:
    """Special-token ids around text a and (optional) text b."""
    prefix: tuple[int, ...]  # before a
    a_suffix: tuple[int, ...]  # after a
    b_prefix: tuple[int, ...]  # before b (pairs only)
    b_suffix: tuple[int, ...]  # after b
    b_token_type: int
    pad_id: int
    end: tuple[int, ...] = ()  # after everything (XLNet's <cls>)
    end_token_type: int = 0

    def num_specials(self, pair: bool) -> int:
        n = len(self.prefix) + len(self.a_suffix) + len(self.end)
        return n + len(self.b_prefix) + len(self.b_suffix) if pair else n


def _optional_id(tokenizer, name: str) -> int | None:
    try:
        return getattr(tokenizer, f"{name}_id")
    except (ValueError, AttributeError):
        return None


def sequence_layout(tokenizer, style: str = "bert") -> SequenceLayout:
    """The special tokens of `style` taken from the tokenizer (errors name the missing token)."""
    if style not in STYLES:
        raise ValueError(f"style={style!r}; choose one of {STYLES}")
    pad = _optional_id(tokenizer, "pad")
    pad = 0 if pad is None else pad
    if style == "gpt2":
        eos = tokenizer.eos_id
        return SequenceLayout((), (), (eos,), (), 0, pad)
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    if style == "xlnet":
        return SequenceLayout((), (sep,), (), (sep,), 1, pad, end=(cls,), end_token_type=2)
    if style == "bert":
        return SequenceLayout((cls,), (sep,), (), (sep,), 1, pad)
    return SequenceLayout((cls,), (sep,), (sep,), (sep,), 0, pad)


def encode_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of text (no special tokens) and each token's (start, end) character span in text."""
    method = getattr(tokenizer, "encode_with_offsets", None)
    if method is None:
        raise TypeError(f"{type(tokenizer).__name__} has no encode_with_offsets(text) method, which extractive QA "
                        "needs to map answers back to the context")
    ids, offsets = method(text)
    return list(ids), [tuple(o) for o in offsets]


def _is_byte_level(tokenizer) -> bool:
    """GPT-2 / RoBERTa byte-level BPE, where a word's tokens depend on the space before it."""
    backend = getattr(tokenizer, "backend", None)
    return backend is not None and type(getattr(backend, "pre_tokenizer", None)).__name__ == "ByteLevel"


def _word_piece_ids(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """Each word tokenized on its own (as if preceded by a space, for byte-level BPE); never empty (-> unk)."""
    texts = [" " + w for w in words] if _is_byte_level(tokenizer) else list(words)
    pieces = tokenizer.encode_batch(texts) if texts else []
    unk = _optional_id(tokenizer, "unk")
    return [list(p) if p else [0 if unk is None else unk] for p in pieces]


def _empty(num_rows: int, max_len: int) -> dict[str, np.ndarray]:
    return {key: np.zeros((num_rows, max_len), np.int32) for key in MODEL_INPUT_KEYS}


def _place(features: dict, row: int, layout: SequenceLayout, a: Sequence[int], b: Sequence[int] | None) -> int:
    """Writes specials + a (+ b) into row; returns where a's first token went."""
    ids = [*layout.prefix, *a, *layout.a_suffix]
    types = [0] * len(ids)
    if b is not None:
        part_b = [*layout.b_prefix, *b, *layout.b_suffix]
        ids += part_b
        types += [layout.b_token_type] * len(part_b)
    ids += layout.end
    types += [layout.end_token_type] * len(layout.end)
    n = len(ids)
    features["inputs"][row, :n] = ids
    features["inputs"][row, n:] = layout.pad_id
    features["segment_ids"][row, :n] = 1
    features["positions"][row, :n] = np.arange(n)
    features["token_types"][row, :n] = types
    return len(layout.prefix)


def _check_max_len(max_len: int, needed: int, what: str):
    if max_len < needed:
        raise ValueError(f"max_len={max_len} is too short for {what} (needs at least {needed})")


# ----------------------------------------------------------------------------------------------------------------
# Sequence classification / regression
# ----------------------------------------------------------------------------------------------------------------

def truncate_longest_first(a: list[int], b: list[int] | None, max_tokens: int) -> tuple[list[int], list[int] | None]:
    """Drops tokens from the end of the longer sequence (b on ties, as BERT's _truncate_seq_pair) until both fit."""
    a = list(a)
    if b is None:
        return a[:max_tokens], None
    b = list(b)
    while len(a) + len(b) > max_tokens:
        (a if len(a) > len(b) else b).pop()
    return a, b


def classification_features(examples: Sequence[TextExample], tokenizer, max_len: int, *, regression: bool = False,
                            style: str = "bert") -> dict[str, np.ndarray]:
    """One row per example: specials + text_a (+ text_b), truncated longest-first to max_len.

    labels: int32 class index (float32 score when regression); unlabelled examples get 0 (0.0).
    """
    layout = sequence_layout(tokenizer, style)
    pair = any(e.text_b is not None for e in examples)
    _check_max_len(max_len, layout.num_specials(pair) + (2 if pair else 1), f"style {style!r} with one token per text")
    ids_a = tokenizer.encode_batch([e.text_a for e in examples]) if examples else []
    ids_b = tokenizer.encode_batch([e.text_b or "" for e in examples]) if pair else [None] * len(examples)
    features = _empty(len(examples), max_len)
    labels = np.zeros(len(examples), np.float32 if regression else np.int32)
    for row, example in enumerate(examples):
        b = ids_b[row] if example.text_b is not None else None
        a, b = truncate_longest_first(ids_a[row], b, max_len - layout.num_specials(b is not None))
        _place(features, row, layout, a, b)
        if example.label is not None:
            if not regression and isinstance(example.label, float):
                raise ValueError(f"{example.guid}: label {example.label} is a score; pass regression=True")
            labels[row] = example.label
    features["labels"] = labels
    features["example_index"] = np.arange(len(examples), dtype=np.int32)
    features["example_weights"] = np.ones(len(examples), np.float32)
    return features


# ----------------------------------------------------------------------------------------------------------------
# Text to text (translation, summarisation)
# ----------------------------------------------------------------------------------------------------------------

SEQ2SEQ_HOST_KEYS = ("example_index", "example_weights", "prompt_inputs", "prompt_lengths")


def seq2seq_features(examples: Sequence[Seq2SeqExample], tokenizer, max_source_len: int, max_target_len: int, *,
                     encoder_decoder: bool, prompt: str = "{source}", decoder_start_id: int = 0,
                     pad_id: int = 0) -> dict[str, np.ndarray]:
    """One row per example, in the batch format the model was pretrained with, so fine-tuning reuses its loss:

    encoder-decoder (T5; the span-corruption format): the encoder reads prompt(source) + EOS [N, S]; the decoder
    reads `decoder_inputs` (decoder_start_id, then the target shifted right) and predicts `targets` = target +
    EOS [N, T] where `weights` is 1. Keys: inputs, segment_ids, positions, decoder_inputs, targets, weights,
    decoder_segment_ids, decoder_positions.

    decoder-only (GPT-2; the CLM format): one row prompt(source) + EOS + target + EOS [N, S + T - 1], with
    `weights` 1 only where the next token is part of the target, so the model learns to write the target given
    the prompt and is never trained to produce the source. Keys: inputs, targets, weights, segment_ids, positions.

    Both: prompt_inputs [N, S] + prompt_lengths [N] (what generation starts from: the encoder input, or the
    decoder prompt up to the separating EOS), example_index, example_weights. The source is cut to S - 1 tokens
    and the target to T - 1 (the EOS always fits); `prompt` is a template with {source}, e.g.
    'translate English to German: {source}' (T5's task prefixes). Unlabelled examples get weight-0 targets.
    """
    if "{source}" not in prompt:
        raise ValueError(f"prompt={prompt!r} must contain '{{source}}' (where the source text goes)")
    if max_source_len < 2 or max_target_len < 2:
        raise ValueError(f"max_len={max_source_len} and max_target_len={max_target_len} must be >= 2 (a token + EOS)")
    eos = tokenizer.eos_id
    n, S, T = len(examples), max_source_len, max_target_len
    sources = tokenizer.encode_batch([prompt.replace("{source}", e.source) for e in examples]) if n else []
    space = " " if (not encoder_decoder and _is_byte_level(tokenizer)) else ""  # GPT-2: ' Ein' after the prompt
    targets = tokenizer.encode_batch([space + (e.target or "") for e in examples]) if n else []

    def ids(shape, fill=0):
        return np.full(shape, fill, np.int32)

    if encoder_decoder:
        out = {"inputs": ids((n, S), pad_id), "segment_ids": ids((n, S)), "positions": ids((n, S)),
               "decoder_inputs": ids((n, T), pad_id), "targets": ids((n, T), pad_id),
               "weights": np.zeros((n, T), np.float32), "decoder_segment_ids": ids((n, T)),
               "decoder_positions": ids((n, T))}
    else:
        L = S + T - 1
        out = {"inputs": ids((n, L), pad_id), "targets": ids((n, L), pad_id), "weights": np.zeros((n, L), np.float32),
               "segment_ids": ids((n, L)), "positions": ids((n, L))}
    prompt_inputs, prompt_lengths = ids((n, S), pad_id), ids(n)
    for row, example in enumerate(examples):
        source_ids = list(sources[row][:S - 1]) + [eos]
        target_ids = list(targets[row][:T - 1]) + [eos] if example.target is not None else []
        prompt_inputs[row, :len(source_ids)] = source_ids
        prompt_lengths[row] = len(source_ids)
        if encoder_decoder:
            k, m = len(source_ids), len(target_ids)
            out["inputs"][row, :k], out["segment_ids"][row, :k], out["positions"][row, :k] = source_ids, 1, range(k)
            decoder_inputs = [decoder_start_id] + target_ids[:-1]
            out["decoder_inputs"][row, :len(decoder_inputs)] = decoder_inputs
            out["decoder_segment_ids"][row, :len(decoder_inputs)] = 1
            out["decoder_positions"][row, :len(decoder_inputs)] = range(len(decoder_inputs))
            out["targets"][row, :m], out["weights"][row, :m] = target_ids, 1.0
        else:
            row_ids = source_ids + target_ids
            k = len(row_ids) - 1 if target_ids else len(source_ids)
            out["inputs"][row, :k] = row_ids[:k]
            out["segment_ids"][row, :k], out["positions"][row, :k] = 1, range(k)
            out["targets"][row, :len(row_ids) - 1] = row_ids[1:]
            # Position i predicts token i + 1: the target's tokens are predicted from the separating EOS on.
            out["weights"][row, len(source_ids) - 1:len(row_ids) - 1] = 1.0
    out.update(prompt_inputs=prompt_inputs, prompt_lengths=prompt_lengths,
               example_index=np.arange(n, dtype=np.int32), example_weights=np.ones(n, np.float32))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Token classification (NER)
# ----------------------------------------------------------------------------------------------------------------

def token_classification_features(examples: Sequence[TokenExample], tokenizer, max_len: int,
                                  labels: Sequence[str], *, style: str = "bert") -> dict[str, np.ndarray]:
    """Each word tokenized on its own; only its FIRST sub-token carries the label (label_weights 1, others 0).

    A sentence whose pieces do not fit in max_len is split at word boundaries into several rows (same
    example_index; word_ids stay the sentence's word numbers), so every word gets a prediction. A single word
    longer than a row keeps its first pieces.
    """
    layout = sequence_layout(tokenizer, style)
    budget = max_len - layout.num_specials(False)
    _check_max_len(max_len, layout.num_specials(False) + 1, f"style {style!r} with one word")
    label_index = {tag: i for i, tag in enumerate(labels)}
    rows = []  # (example index, [(word index, piece ids)])
    for index, example in enumerate(examples):
        if example.tags is not None:
            if len(example.tags) != len(example.words):
                raise ValueError(f"{example.guid}: {len(example.words)} words but {len(example.tags)} tags")
            unknown = sorted(set(example.tags) - set(label_index))
            if unknown:
                raise ValueError(f"{example.guid}: tag(s) {unknown} not in the label list {list(labels)}")
        chunk, used = [], 0
        for word, pieces in enumerate(_word_piece_ids(tokenizer, example.words)):
            pieces = pieces[:budget]
            if chunk and used + len(pieces) > budget:
                rows.append((index, chunk))
                chunk, used = [], 0
            chunk.append((word, pieces))
            used += len(pieces)
        rows.append((index, chunk))
    features = _empty(len(rows), max_len)
    label_ids = np.zeros((len(rows), max_len), np.int32)
    label_weights = np.zeros((len(rows), max_len), np.float32)
    word_ids = np.full((len(rows), max_len), -1, np.int32)
    for row, (index, chunk) in enumerate(rows):
        start = _place(features, row, layout, [p for _, pieces in chunk for p in pieces], None)
        tags = examples[index].tags
        position = start
        for word, pieces in chunk:
            word_ids[row, position:position + len(pieces)] = word
            if tags is not None:
                label_ids[row, position] = label_index[tags[word]]
                label_weights[row, position] = 1.0
            position += len(pieces)
    features.update(labels=label_ids, label_weights=label_weights, word_ids=word_ids,
                    example_index=np.array([index for index, _ in rows], np.int32).reshape(-1),
                    example_weights=np.ones(len(rows), np.float32))
    return features


# ----------------------------------------------------------------------------------------------------------------
# Extractive QA (SQuAD)
# ----------------------------------------------------------------------------------------------------------------

def _answer_token_span(offsets: Sequence[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """First token ending after char_start .. last token starting before char_end (context token indices)."""
    start = next((i for i, (s, e) in enumerate(offsets) if e > char_start and e > s), None)
    end = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < char_end
                and offsets[i][1] > offsets[i][0]), None)
    if start is None or end is None or end < start:
        return None
    return start, end


def _windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of the context windows: each starts `stride` tokens after the previous one."""
    spans, start = [], 0
    while True:
        length = min(num_tokens - start, window)
        spans.append((start, length))
        if start + length >= num_tokens:
            return spans
        start += min(length, stride)


def qa_features(examples: Sequence[QAExample], tokenizer, max_len: int = 384, doc_stride: int = 128,
                max_query_len: int = 64, *, style: str = "bert") -> dict[str, np.ndarray]:
    """Question + a window of the context per row, windows `doc_stride` context tokens apart (the step between
    window starts, as in BERT's run_squad; HF's `stride` is the overlap instead).

    Targets come from the first answer: start/end token positions in the row, or 0/0 (the first token) when the
    answer is not wholly inside the window. Questions longer than max_query_len tokens are cut.
    """
    if style == "gpt2":
        raise ValueError("qa_features: style 'gpt2' has no first special token to point unanswerable windows at; "
                         "use 'bert' or 'roberta'")
    layout = sequence_layout(tokenizer, style)
    if doc_stride < 1:
        raise ValueError(f"doc_stride={doc_stride} must be >= 1")
    context_cache: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    questions = tokenizer.encode_batch([e.question for e in examples]) if examples else []
    rows = []
    for index, example in enumerate(examples):
        if example.context not in context_cache:
            context_cache[example.context] = encode_with_offsets(tokenizer, example.context)
        context_ids, offsets = context_cache[example.context]
        query = questions[index][:max_query_len]
        window = max_len - len(query) - layout.num_specials(True)
        if window < 1:
            raise ValueError(f"max_len={max_len} leaves no room for the context after a question of {len(query)} "
                             f"tokens (max_query_len={max_query_len})")
        answer_span = None
        if example.answers:
            answer = example.answers[0]
            answer_span = _answer_token_span(offsets, answer.answer_start, answer.answer_start + len(answer.text))
        spans = _windows(len(context_ids), window, doc_stride)
        for span_index, (start, length) in enumerate(spans):
            rows.append((index, query, context_ids, offsets, start, length, answer_span, spans, span_index))
    n = len(rows)
    features = _empty(n, max_len)
    start_positions = np.zeros(n, np.int32)
    end_positions = np.zeros(n, np.int32)
    token_offsets = np.full((n, max_len, 2), -1, np.int32)
    max_context = np.zeros((n, max_len), bool)
    for row, (_, query, context_ids, offsets, start, length, answer_span, spans, span_index) in enumerate(rows):
        _place(features, row, layout, query, context_ids[start:start + length])
        if layout.end:  # a window without the answer points at the classification token: XLNet's is last
            start_positions[row] = end_positions[row] = int(features["segment_ids"][row].sum()) - 1
        first = len(layout.prefix) + len(query) + len(layout.a_suffix) + len(layout.b_prefix)
        token_offsets[row, first:first + length] = offsets[start:start + length]
        for i in range(length):
            max_context[row, first + i] = _is_max_context(spans, span_index, start + i)
        if answer_span is not None and start <= answer_span[0] and answer_span[1] < start + length:
            start_positions[row] = first + answer_span[0] - start
            end_positions[row] = first + answer_span[1] - start
    features.update(start_positions=start_positions, end_positions=end_positions, token_offsets=token_offsets,
                    max_context=max_context, example_index=np.array([r[0] for r in rows], np.int32).reshape(-1),
                    example_weights=np.ones(n, np.float32))
    return features


def _is_max_context(spans: list[tuple[int, int]], span_index: int, position: int) -> bool:
    """BERT's _check_is_max_context: the window where min(left, right) context (+ 0.01 * length) is largest."""
    best_score, best_index = None, None
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        if not start <= position <= end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, i
    return best_index == span_index
