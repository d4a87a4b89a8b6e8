"""Data: text -> tokens -> host batches (tokenizers, TFDS array_record corpora, grain stages, packing, pairing).

The objectives (jaxlm.objectives) assemble these stages into their pipelines; nothing here knows an objective.
"""
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
from jaxlm.data.hf_tokenizer import HFTokenizer
from jaxlm.data.pairing import TokenizedDocuments
from jaxlm.data.pipeline import StreamOptions, empty_batch
from jaxlm.data.sources import load_or_train_tokenizer, prepare_dataset
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.data.tokenizer_io import find_run_tokenizer, keep_tokenizer, load_tokenizer

__all__ = [
    "DataNotPreparedError", "DataStats", "HFTokenizer", "JaxlmPydoc", "JaxlmTextFiles", "PreparedCorpus",
    "StreamOptions", "TextFilesConfig", "TokenizedDocuments", "Tokenizer", "empty_batch", "find_run_tokenizer",
    "keep_tokenizer", "load_data_source", "load_or_train_tokenizer", "load_tokenizer", "prepare_dataset",
    "prepare_pydoc", "prepare_text_files", "split_sentences", "train_tokenizer",
]
