"""Data: text -> tokens -> host batches (sentencepiece, TFDS array_record corpora, grain pipelines)."""

from jaxlm.data.corpus import (
    DataNotPreparedError,
    DataStats,
    JaxlmPydoc,
    JaxlmTextFiles,
    PreparedCorpus,
    TextFilesConfig,
    load_data_source,
    prepare_pydoc,
    prepare_text_files,
    split_sentences,
)
from jaxlm.data.pipeline import (
    BATCH_KEYS,
    OBJECTIVES,
    TokenizedDocuments,
    batch_spec,
    default_max_predictions,
    empty_batch,
    make_eval_iterator,
    make_pretraining_dataset,
    make_pretraining_iterator,
    span_corruption_lengths,
)
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer

__all__ = [
    "BATCH_KEYS", "OBJECTIVES", "DataNotPreparedError", "DataStats", "JaxlmPydoc", "JaxlmTextFiles",
    "PreparedCorpus", "TextFilesConfig", "TokenizedDocuments", "Tokenizer", "batch_spec",
    "default_max_predictions", "empty_batch", "load_data_source", "make_eval_iterator",
    "make_pretraining_dataset", "make_pretraining_iterator", "prepare_pydoc", "prepare_text_files",
    "span_corruption_lengths", "split_sentences", "train_tokenizer",
]
