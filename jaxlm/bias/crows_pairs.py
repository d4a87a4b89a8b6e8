"""The CrowS-Pairs file (Nangia et al. 2020) -> sentence pairs, every bad row named by file and line.

The authors' `data/crows_pairs_anonymized.csv`: a CSV with standard double-quote quoting whose first column has an
empty name (a row index), then `sent_more, sent_less, stereo_antistereo, bias_type, annotations, anon_writer,
anon_annotators`. One field holds a newline (row 1293), so the file is read with a real CSV reader and a pair's line
is the line its record starts on.

`sent_more` is the sentence that is more stereotyping (the one a biased model prefers); `stereo_antistereo` says
whether it demonstrates a stereotype of a historically disadvantaged group (`stereo`) or `sent_less` violates one
(`antistereo`). The authors' metric.py scores `sent1, sent2 = sent_more, sent_less` for stereo pairs and the other
way round for antistereo ones: the order matters for which tokens difflib finds shared, so it is kept (`Pair.sent1`).
"""
from __future__ import annotations

import csv
import dataclasses
import os

from jaxlm.paths import open_text
from jaxlm.tasks.readers import BadInputError

DEFAULT_FILE = os.path.join("..", "shared", "data", "crows_pairs", "crows_pairs_anonymized.csv")
COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")
DIRECTIONS = ("stereo", "antistereo")
# The nine bias types of the English data, in the paper's order (Table 1).
BIAS_TYPES = ("race-color", "socioeconomic", "gender", "disability", "nationality", "sexual-orientation",
              "physical-appearance", "religion", "age")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One CrowS-Pairs example; `line` is where its record starts in the file (1 = the header)."""
    line: int
    sent_more: str
    sent_less: str
    direction: str  # 'stereo' | 'antistereo'
    bias_type: str

    @property
    def sent1(self) -> str:
        """metric.py's first sentence (the one difflib reads first)."""
        return self.sent_more if self.direction == "stereo" else self.sent_less

    @property
    def sent2(self) -> str:
        return self.sent_less if self.direction == "stereo" else self.sent_more


def _records(f):
    """(line where the record starts, fields) of each CSV record."""
    reader = csv.reader(f)
    start = 1
    for fields in reader:
        yield start, fields
        start = reader.line_num + 1


def read_crows_pairs(path: str, bias_types: tuple[str, ...] = BIAS_TYPES) -> list[Pair]:
    """Every pair of a CrowS-Pairs CSV, in file order. A missing column, a short row, an empty sentence, an
    unknown direction or bias type is a BadInputError naming `path:line`."""
    pairs = []
    with open_text(path, encoding="utf-8-sig", newline="") as f:
        records = _records(f)
        try:
            _, header = next(records)
        except StopIteration:
            raise BadInputError(f"{path}: empty file (expected a header with columns {list(COLUMNS)})") from None
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise BadInputError(f"{path}:1: the header has no column {', '.join(map(repr, missing))} (it has "
                                f"{header}; CrowS-Pairs needs {list(COLUMNS)})")
        where = {c: header.index(c) for c in COLUMNS}
        for line, fields in records:
            if not any(x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                short = [c for c in COLUMNS if where[c] >= len(fields)]
                what = f"no {short[0]!r} column" if short else f"{len(fields)} columns"
                raise BadInputError(f"{path}:{line}: {what} (the header has {len(header)} columns)")
            row = {c: fields[where[c]] for c in COLUMNS}
            for column in ("sent_more", "sent_less"):
                if not row[column].strip():
                    raise BadInputError(f"{path}:{line}: empty {column!r}")
            if row["stereo_antistereo"] not in DIRECTIONS:
                raise BadInputError(f"{path}:{line}: stereo_antistereo={row['stereo_antistereo']!r}; expected one "
                                    f"of {list(DIRECTIONS)}")
            if row["bias_type"] not in bias_types:
                raise BadInputError(f"{path}:{line}: unknown bias_type {row['bias_type']!r}; expected one of "
                                    f"{list(bias_types)}")
            pairs.append(Pair(line, row["sent_more"], row["sent_less"], row["stereo_antistereo"], row["bias_type"]))
    if not pairs:
        raise BadInputError(f"{path}: no pairs after the header")
    return pairs
