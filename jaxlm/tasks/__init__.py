"""Fine-tuning tasks, one class per kind (jaxlm.tasks.base.Task; registered in jaxlm.tasks.registry), built on:
task files -> examples (readers) -> fixed-shape features (features) and batches (batches) -> model outputs ->
predictions (postprocess) -> scores (metrics)."""

from jaxlm.tasks.base import Task, TaskModel, TaskSpec
from jaxlm.tasks.batches import EpochBatches, iterate_batches, num_batches, num_rows
from jaxlm.tasks.features import (
    MODEL_INPUT_KEYS,
    STYLES,
    SequenceLayout,
    classification_features,
    encode_with_offsets,
    qa_features,
    seq2seq_features,
    sequence_layout,
    token_classification_features,
    truncate_longest_first,
)
from jaxlm.tasks.metrics import (
    GLUE_METRICS,
    TEXT_METRICS,
    accuracy,
    average_ranks,
    bleu,
    compute_metrics,
    conll_entity_scores,
    f1_binary,
    macro_f1,
    matthews_corrcoef,
    normalize_answer,
    pearson,
    rouge,
    spearman,
    squad_exact_match,
    squad_f1,
    squad_scores,
    text_metrics,
)
from jaxlm.tasks.postprocess import ner_word_predictions, squad_nbest, squad_predictions
from jaxlm.tasks.readers import (
    CONLL2003_BIO_LABELS,
    GLUE_LAYOUTS,
    Answer,
    BadInputError,
    QAExample,
    ReadStats,
    Seq2SeqExample,
    TextExample,
    TextLayout,
    TokenExample,
    glue_layout,
    iob1_to_bio,
    parallel_paths,
    read_conll,
    read_glue,
    read_parallel,
    read_seq2seq,
    read_squad,
    read_text_classification,
    tfds_examples,
    tfds_label_names,
)
from jaxlm.tasks.registry import TASKS, get_task, register_task, task_for_config

__all__ = [
    "EpochBatches", "TASKS", "Task", "TaskModel", "TaskSpec", "get_task", "register_task", "task_for_config",
    "CONLL2003_BIO_LABELS", "GLUE_LAYOUTS", "GLUE_METRICS", "MODEL_INPUT_KEYS", "STYLES", "TEXT_METRICS", "Answer",
    "BadInputError", "QAExample", "ReadStats", "Seq2SeqExample", "SequenceLayout", "TextExample", "TextLayout",
    "TokenExample", "accuracy", "average_ranks", "bleu", "classification_features", "compute_metrics",
    "conll_entity_scores", "encode_with_offsets", "f1_binary", "glue_layout", "iob1_to_bio", "iterate_batches",
    "macro_f1", "matthews_corrcoef", "ner_word_predictions", "normalize_answer", "num_batches", "num_rows",
    "parallel_paths", "pearson", "qa_features", "read_conll", "read_glue", "read_parallel", "read_seq2seq",
    "read_squad", "read_text_classification", "rouge", "seq2seq_features", "sequence_layout", "spearman",
    "squad_exact_match", "squad_f1", "squad_nbest", "squad_predictions", "squad_scores", "text_metrics",
    "tfds_examples", "tfds_label_names", "token_classification_features", "truncate_longest_first",
]
