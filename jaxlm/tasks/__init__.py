"""Fine-tuning data: task files -> examples (readers) -> fixed-shape features and batches (features) -> model
outputs -> predictions (postprocess) -> scores (metrics)."""

from jaxlm.tasks.features import (
    MODEL_INPUT_KEYS,
    STYLES,
    SequenceLayout,
    classification_features,
    encode_with_offsets,
    iterate_batches,
    num_batches,
    num_rows,
    qa_features,
    sequence_layout,
    token_classification_features,
    truncate_longest_first,
)
from jaxlm.tasks.metrics import (
    GLUE_METRICS,
    accuracy,
    average_ranks,
    compute_metrics,
    conll_entity_scores,
    f1_binary,
    macro_f1,
    matthews_corrcoef,
    normalize_answer,
    pearson,
    spearman,
    squad_exact_match,
    squad_f1,
    squad_scores,
)
from jaxlm.tasks.postprocess import ner_word_predictions, squad_nbest, squad_predictions
from jaxlm.tasks.readers import (
    CONLL2003_BIO_LABELS,
    GLUE_LAYOUTS,
    Answer,
    BadInputError,
    QAExample,
    ReadStats,
    TextExample,
    TextLayout,
    TokenExample,
    glue_layout,
    iob1_to_bio,
    read_conll,
    read_glue,
    read_squad,
    read_text_classification,
    tfds_examples,
    tfds_label_names,
)

__all__ = [
    "CONLL2003_BIO_LABELS", "GLUE_LAYOUTS", "GLUE_METRICS", "MODEL_INPUT_KEYS", "STYLES", "Answer",
    "BadInputError", "QAExample", "ReadStats", "SequenceLayout", "TextExample", "TextLayout", "TokenExample",
    "accuracy", "average_ranks", "classification_features", "compute_metrics", "conll_entity_scores",
    "encode_with_offsets", "f1_binary", "glue_layout", "iob1_to_bio", "iterate_batches", "macro_f1",
    "matthews_corrcoef", "ner_word_predictions", "normalize_answer", "num_batches", "num_rows", "pearson",
    "qa_features", "read_conll", "read_glue", "read_squad", "read_text_classification", "sequence_layout",
    "spearman", "squad_exact_match", "squad_f1", "squad_nbest", "squad_predictions", "squad_scores",
    "tfds_examples", "tfds_label_names", "token_classification_features", "truncate_longest_first",
]
