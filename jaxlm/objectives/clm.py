"""Causal-LM examples (GPT-2): next-token rows and the reference packing of several documents per row.

Packed rows use the batch format's one masking concept: `segment_ids` 1..k name the document of each token
(0 = padding), `positions` restart at 0 per document, and no weighted target crosses a document boundary.
"""
import numpy as np


def _as_tokens(token_ids, name):
    tokens = np.asarray(token_ids)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")
    return tokens


def next_token_example(token_ids, seq_len, pad_id=0):
    """One row from a chunk of at most seq_len + 1 tokens: inputs = tokens[:-1], targets = tokens[1:].

    Returns {'inputs', 'targets', 'segment_ids' (1 on real inputs), 'positions' (arange)}: int32 [seq_len],
    'weights' float32 [seq_len] (1 on real targets). A one-token chunk gives an all-padding row.
    """
    tokens = _as_tokens(token_ids, "token_ids")
    if not 1 <= tokens.size <= seq_len + 1:
        raise ValueError(f"token_ids has {tokens.size} tokens; next_token_example needs 1..seq_len+1 = "
                         f"{seq_len + 1} (split longer documents with split_long_document)")
    n = tokens.size - 1
    inputs = np.full(seq_len, pad_id, np.int32)
    targets = np.full(seq_len, pad_id, np.int32)
    inputs[:n] = tokens[:-1]
    targets[:n] = tokens[1:]
    weights = np.zeros(seq_len, np.float32)
    weights[:n] = 1.0
    segment_ids = np.zeros(seq_len, np.int32)
    segment_ids[:n] = 1
    return {"inputs": inputs, "targets": targets, "weights": weights, "segment_ids": segment_ids,
            "positions": np.arange(seq_len, dtype=np.int32)}


def split_long_document(token_ids, max_len):
    """Consecutive, non-overlapping pieces of at most max_len tokens (the last may be shorter)."""
    tokens = _as_tokens(token_ids, "token_ids")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    return [tokens[i:i + max_len] for i in range(0, tokens.size, max_len)]


def pack_documents(documents, seq_len, pad_id=0):
    """Pack tokenised documents (1-D int arrays, EOS already appended by the caller) into rows of seq_len.

    First-fit greedy, in document order: each piece goes into the first row with room, else a new row.
    Inputs are the document tokens themselves; targets[i] is the next token of the same document, and the
    last token of each document has weight 0 (as has padding), so no target crosses a document boundary.
    A document longer than seq_len is split into pieces of seq_len (`split_long_document`); each piece is its
    own segment (it attends only within itself) but its last token still predicts the first token of the
    next piece, so splitting loses no target. Every token of every document is an input exactly once.
    Empty documents are skipped. Returns a list of row dicts: inputs, targets, segment_ids, positions
    (int32 [seq_len]) and weights (float32 [seq_len]).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    rows, free = [], []  # free[r] = tokens still unused in rows[r]
    for d, document in enumerate(documents):
        tokens = _as_tokens(document, f"documents[{d}]")
        if tokens.size == 0:
            continue
        targets = np.append(tokens[1:], pad_id)
        weights = np.ones(tokens.size, np.float32)
        weights[-1] = 0.0
        for start in range(0, tokens.size, seq_len):
            piece = slice(start, start + seq_len)
            n = tokens[piece].size
            r = next((i for i, room in enumerate(free) if room >= n), None)
            if r is None:
                r = len(rows)
                rows.append({
                    "inputs": np.full(seq_len, pad_id, np.int32),
                    "targets": np.full(seq_len, pad_id, np.int32),
                    "weights": np.zeros(seq_len, np.float32),
                    "segment_ids": np.zeros(seq_len, np.int32),
                    "positions": np.zeros(seq_len, np.int32),
                })
                free.append(seq_len)
            row, at = rows[r], seq_len - free[r]
            place = slice(at, at + n)
            row["inputs"][place] = tokens[piece]
            row["targets"][place] = targets[piece]
            row["weights"][place] = weights[piece]
            row["segment_ids"][place] = row["segment_ids"][at - 1] + 1 if at else 1
            row["positions"][place] = np.arange(n)
            free[r] -= n
    return rows
