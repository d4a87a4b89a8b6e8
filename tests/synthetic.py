"""Synthetic batches of token ids for tests that need exact control of the rows (no tokenizer, no grain)."""
import numpy as np


def clm_batch(documents, seq_len: int, rows: int) -> dict:
    """The CLM batch format (jaxlm.objectives.clm) of documents packed as the pipeline packs them: every document's
    (input, next token) pairs concatenated and cut into rows; segment ids number the documents of a row, positions
    restart per document."""
    inputs, targets, segments = [], [], []
    for d, doc in enumerate(documents):
        inputs += list(doc[:-1])
        targets += list(doc[1:])
        segments += [d] * (len(doc) - 1)
    need = rows * seq_len
    if len(inputs) < need:
        raise ValueError(f"{len(inputs)} pairs do not fill {rows} rows of {seq_len}")
    shape = (rows, seq_len)
    doc_ids = np.asarray(segments[:need]).reshape(shape)
    segment_ids = np.zeros(shape, np.int32)
    positions = np.zeros(shape, np.int32)
    for r in range(rows):
        starts = np.concatenate([[True], doc_ids[r, 1:] != doc_ids[r, :-1]])
        segment_ids[r] = np.cumsum(starts)
        for i in range(seq_len):
            positions[r, i] = 0 if starts[i] else positions[r, i - 1] + 1
    return {"inputs": np.asarray(inputs[:need], np.int32).reshape(shape),
            "targets": np.asarray(targets[:need], np.int32).reshape(shape),
            "weights": np.ones(shape, np.float32), "segment_ids": segment_ids, "positions": positions}
