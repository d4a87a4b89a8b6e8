"""Bias probes of language models: CrowS-Pairs (Nangia et al. 2020), `python -m jaxlm.bias --checkpoint RUN`.

    crows_pairs.py     the data file -> pairs (bad rows named by file:line)
    language_model.py  any run -> its language model on the mesh (a task fine-tuning run: its backbone with the
                       LM head of the run it started from)
    scoring.py         sentence scores batched on the mesh: pseudo-log-likelihood (masked LMs) or sentence
                       log-likelihood (GPT-2, T5)
    metric.py          the metric score, per direction and bias type, with each reference tool's tie rules
    report.py          JSON, per-pair CSV, bar chart
    probe.py           all of it for one run

From Python: `jaxlm.bias.crows_pairs_probe(RUN, CSV)` -> the report dict.
"""
from jaxlm.bias.crows_pairs import BIAS_TYPES, Pair, read_crows_pairs
from jaxlm.bias.language_model import open_language_model
from jaxlm.bias.metric import crows_pairs_metric
from jaxlm.bias.probe import crows_pairs_probe
from jaxlm.bias.scoring import Scores, SentenceScorer, shared_spans

__all__ = ["BIAS_TYPES", "Pair", "Scores", "SentenceScorer", "crows_pairs_metric", "crows_pairs_probe",
           "open_language_model", "read_crows_pairs", "shared_spans"]
