"""The CrowS-Pairs probe of one run: read the pairs, score both sentences of each with the run's language model,
apply the metric of the tool that defines that scoring, and write the report (JSON, per-pair CSV, bar chart)."""
from __future__ import annotations

import os

import jax
import numpy as np
from etils import epath

from jaxlm.bias.crows_pairs import read_crows_pairs
from jaxlm.bias.language_model import open_language_model
from jaxlm.bias.metric import crows_pairs_metric, pair_outcomes
from jaxlm.bias.report import plot_bias_types, write_json, write_pair_scores
from jaxlm.bias.scoring import SentenceScorer
from jaxlm.paths import absolute

RULES_BY_SCORING = {"pll": "authors", "sentence": "lm_eval"}
SCORING_NAMES = {"pll": "pseudo-log-likelihood of the shared tokens, each masked in turn (CrowS-Pairs metric.py)",
                 "sentence": "sentence log-likelihood after the prefix token (lm-evaluation-harness crows_pairs)"}
OUTPUT_FILES = {"json": "crows_pairs.json", "scores": "crows_pairs_scores.csv", "plot": "crows_pairs.png"}


def crows_pairs_probe(checkpoint: str, data_file: str, *, step: int | None = None, batch_size: int = 0,
                      output_dir: str = "", mesh=None, tokenizer: str = "", progress=None) -> dict:
    """The report of `checkpoint` on the CrowS-Pairs file `data_file`; written to output_dir when given.
    progress(rows) is called as batches of model rows finish."""
    pairs = read_crows_pairs(data_file)
    run = open_language_model(checkpoint, step, mesh=mesh, tokenizer=tokenizer)
    scorer = SentenceScorer(run, batch_size)
    scores = scorer([(p.sent1, p.sent2) for p in pairs], where=[f"{data_file}:{p.line}" for p in pairs],
                    progress=progress)
    stereo = np.array([p.direction == "stereo" for p in pairs])
    more = np.where(stereo, scores.sent1, scores.sent2)
    less = np.where(stereo, scores.sent2, scores.sent1)
    rules = RULES_BY_SCORING[scores.scoring]
    report = {
        "model": absolute(checkpoint), "family": run.family.name, "step": run.step, "data": absolute(data_file),
        "scoring": scores.scoring, "scoring_detail": SCORING_NAMES[scores.scoring],
        **crows_pairs_metric(pairs, more, less, rules),
        "speed": {"pairs_per_second": round(scores.pairs_per_second, 2), "seconds": round(scores.seconds, 3),
                  "model_rows": scores.rows, "batches": scores.batches, "batch_size": scorer.batch_size,
                  "widths": list(scores.widths), "devices": int(run.mesh.devices.size),
                  "device_kind": jax.devices()[0].device_kind},
    }
    if output_dir:
        paths = {k: os.path.join(output_dir, name) for k, name in OUTPUT_FILES.items()}
        if jax.process_index() == 0:
            epath.Path(output_dir).mkdir(parents=True, exist_ok=True)
        wins, _ = pair_outcomes(more, less, rules)
        write_json(paths["json"], report)
        write_pair_scores(paths["scores"], pairs, more, less, wins)
        plot_bias_types(paths["plot"], report, f"CrowS-Pairs: {os.path.basename(os.path.abspath(checkpoint))} "
                        f"(step {run.step}, {scores.scoring}), metric score {report['metric_score']}")
        report["files"] = paths
    return report
