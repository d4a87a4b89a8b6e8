"""Sentence pairs for next-sentence prediction (BERT): `[CLS] A [SEP] B [SEP]` built one instance per call, from
documents tokenized sentence by sentence (`TokenizedDocuments`).

BERT's `create_instances_from_document` walks a document sequentially and emits several instances; here each
call builds ONE instance from a random position of `documents[doc_index]`, so it runs as a random-access
(map-style) transform, deterministic given the numpy Generator. Kept from BERT: the target length
(max_length - 3, or with prob short_seq_prob a random length in [2, max_length - 3]), A = the first a_end
sentences of a chunk of consecutive sentences, B = the rest of the chunk (label 0) or sentences from a
random other document (label 1), and `truncate_seq_pair`.
Changed, so that labels are balanced and no instance is wasted: the label is drawn first (prob
random_next_prob of 1) for every instance, where BERT forces "random" for one-sentence chunks; a chunk
always holds >= 2 sentences (a long first sentence is followed by the next one and truncation does the
rest), and a one-sentence document is split inside its sentence. A one-token one-sentence document cannot
give a real continuation: its instance gets label 1.
"""
import collections
import threading
from collections.abc import Sequence

import numpy as np

from jaxlm.data import corpus


def _as_sentences(document, where):
    sentences = [np.asarray(s).reshape(-1) for s in document]
    sentences = [s for s in sentences if s.size]
    if not sentences:
        raise ValueError(f"{where} has no tokens (empty documents must be filtered before NSP)")
    return sentences


def truncation_counts(len_a, len_b, max_tokens):
    """How many tokens BERT's truncate_seq_pair removes from A and from B (it removes one token at a time
    from the longer side, B on ties) -- in closed form instead of a per-token loop."""
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return 0, 0
    diff = abs(len_a - len_b)
    if diff >= excess:
        return (excess, 0) if len_a > len_b else (0, excess)
    rest = excess - diff  # sides are equal after `diff` removals; then B, A, B, A, ...
    cut_a, cut_b = rest // 2, rest - rest // 2
    return (cut_a + diff, cut_b) if len_a > len_b else (cut_a, cut_b + diff)


def truncate_seq_pair(tokens_a, tokens_b, max_tokens, rng):
    """BERT's truncate_seq_pair: each removed token comes from the front or the back with prob 1/2, which
    only matters through the count removed from the front: a Binomial(n_removed, 1/2) draw."""
    cut_a, cut_b = truncation_counts(len(tokens_a), len(tokens_b), max_tokens)
    if cut_a:
        front = int(rng.binomial(cut_a, 0.5))
        tokens_a = tokens_a[front:len(tokens_a) - (cut_a - front)]
    if cut_b:
        front = int(rng.binomial(cut_b, 0.5))
        tokens_b = tokens_b[front:len(tokens_b) - (cut_b - front)]
    return tokens_a, tokens_b


def make_sentence_pair(documents, doc_index, rng, *, max_length, cls_id, sep_id, pad_id=0,
                       random_next_prob=0.5, short_seq_prob=0.1):
    """One NSP instance from documents[doc_index]. documents: random-access sequence of documents, each a
    list of sentences, each a 1-D int array of token ids.

    Returns {'inputs', 'token_types' (0: CLS A SEP, 1: B SEP, 0: pad), 'segment_ids' (1 real, 0 pad),
    'positions' (arange): int32 [max_length]; 'nsp_labels': int32 scalar (1 = B is random);
    'b_doc_index': int, the document B came from}.
    """
    n_docs = len(documents)
    if n_docs < 2:
        raise ValueError(f"NSP needs at least 2 documents to draw random next sentences, got {n_docs}")
    if not 0 <= doc_index < n_docs:
        raise ValueError(f"doc_index={doc_index} out of range for {n_docs} documents")
    max_tokens = max_length - 3
    if max_tokens < 2:
        raise ValueError(f"max_length={max_length} leaves no room for [CLS] A [SEP] B [SEP] (need >= 5)")
    if not (0.0 <= random_next_prob <= 1.0 and 0.0 <= short_seq_prob <= 1.0):
        raise ValueError(f"random_next_prob={random_next_prob} and short_seq_prob={short_seq_prob} must be "
                         "probabilities")

    sentences = _as_sentences(documents[doc_index], f"documents[{doc_index}]")
    target_length = max_tokens
    if rng.random() < short_seq_prob:
        target_length = int(rng.integers(2, max_tokens + 1))
    is_random_next = bool(rng.random() < random_next_prob)

    if len(sentences) >= 2:
        # A chunk of >= 2 consecutive sentences starting at a random sentence, grown to target_length.
        start = int(rng.integers(0, len(sentences) - 1))
        end, length = start + 1, sentences[start].size
        while end < len(sentences) and (end - start < 2 or length < target_length):
            length += sentences[end].size
            end += 1
        a_end = start + (int(rng.integers(1, end - start)) if end - start > 2 else 1)
        tokens_a = np.concatenate(sentences[start:a_end])
        tokens_b = np.concatenate(sentences[a_end:end])
    else:  # one sentence: split it inside
        only = sentences[0]
        cut = int(rng.integers(1, only.size)) if only.size >= 2 else 1
        tokens_a, tokens_b = only[:cut], only[cut:]
        if tokens_b.size == 0:
            is_random_next = True

    b_doc_index = doc_index
    if is_random_next:
        b_doc_index = int(rng.integers(0, n_docs - 1))
        b_doc_index += b_doc_index >= doc_index  # uniform over the other documents
        other = _as_sentences(documents[b_doc_index], f"documents[{b_doc_index}]")
        target_b_length = target_length - tokens_a.size
        pieces, length = [], 0
        for sentence in other[int(rng.integers(0, len(other))):]:
            pieces.append(sentence)
            length += sentence.size
            if length >= target_b_length:
                break
        tokens_b = np.concatenate(pieces)

    tokens_a, tokens_b = truncate_seq_pair(tokens_a, tokens_b, max_tokens, rng)
    la, lb = tokens_a.size, tokens_b.size
    inputs = np.full(max_length, pad_id, np.int32)
    inputs[0] = cls_id
    inputs[1:1 + la] = tokens_a
    inputs[1 + la] = sep_id
    inputs[2 + la:2 + la + lb] = tokens_b
    inputs[2 + la + lb] = sep_id
    n_real = 3 + la + lb
    token_types = np.zeros(max_length, np.int32)
    token_types[2 + la:n_real] = 1
    segment_ids = np.zeros(max_length, np.int32)
    segment_ids[:n_real] = 1
    return {
        "inputs": inputs,
        "token_types": token_types,
        "segment_ids": segment_ids,
        "positions": np.arange(max_length, dtype=np.int32),
        "nsp_labels": np.array(int(is_random_next), np.int32),
        "b_doc_index": int(b_doc_index),
    }


class TokenizedDocuments(Sequence):
    """Random access: document i -> list of its sentences as int32 token arrays (cached LRU).

    What nsp.make_sentence_pair reads (it picks random other documents for negatives, and needs
    them non-empty): an empty document reads as the next non-empty one, so bad records in a
    catalog dataset never stop a run. `sentences(i)` gives document i itself.
    """

    def __init__(self, source, tokenizer, text_key: str = corpus.TEXT_KEY,
                 stats: corpus.DataStats | None = None, cache_size: int = 512):
        self.source, self.tokenizer, self.text_key = source, tokenizer, text_key
        self.stats, self.cache_size = stats, cache_size
        self._init_cache()

    def _init_cache(self):
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_cache"], state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_cache()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> list[np.ndarray]:
        n = len(self)
        for offset in range(n):
            doc = self.sentences((int(index) + offset) % n)
            if doc:
                return doc
        raise ValueError(f"TokenizedDocuments: all {n} documents of {self.source!r} are empty")

    def sentences(self, index: int) -> list[np.ndarray]:
        index = int(index)
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        text = corpus.record_text(self.source[index], self.text_key, self.stats)
        sentences = corpus.split_sentences(text)
        doc = [np.asarray(ids, np.int32) for ids in self.tokenizer.encode_batch(sentences) if ids]
        with self._lock:
            self._cache[index] = doc
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return doc
