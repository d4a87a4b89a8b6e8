"""The fine-tuning tasks jaxlm knows, keyed by `config.task`: one line per task class (each may serve several
names: classification and regression share one)."""
from __future__ import annotations

from jaxlm.tasks.base import Task, normalized_format
from jaxlm.tasks.classification import ClassificationTask
from jaxlm.tasks.question_answering import QuestionAnsweringTask
from jaxlm.tasks.retrieval import RetrievalTask
from jaxlm.tasks.seq2seq import Seq2SeqTask
from jaxlm.tasks.similarity import SimilarityTask
from jaxlm.tasks.token_classification import TokenClassificationTask

TASK_CLASSES: list[type[Task]] = [ClassificationTask, TokenClassificationTask, QuestionAnsweringTask, Seq2SeqTask,
                                  RetrievalTask, SimilarityTask]
TASKS: dict[str, Task] = {name: cls() for cls in TASK_CLASSES for name in cls.names}


def register_task(cls: type[Task]) -> type[Task]:
    """Adds a task class under its `names` (usable as a decorator)."""
    TASK_CLASSES.append(cls)
    TASKS.update({name: cls() for name in cls.names})
    return cls


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"config.task={name!r} is not a fine-tuning task; choose one of {sorted(TASKS)}")
    return TASKS[name]


def task_for_config(config) -> Task:
    """The task of a fine-tuning config, checked against the data format it reads."""
    task = get_task(config.task)
    fmt = normalized_format(config.data.format)
    if fmt in task.formats:
        return task
    owners = sorted(name for name, t in TASKS.items() if fmt in t.formats)
    if not owners:
        known = sorted({f for t in TASKS.values() for f in t.formats})
        raise ValueError(f"config.data.format={config.data.format!r}; choose one of {known}")
    raise ValueError(f"config.task={config.task!r} does not fit config.data.format={config.data.format!r}, which is "
                     f"a {' / '.join(owners)} format (set --config.task={owners[0]})")
