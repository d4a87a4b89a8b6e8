"""Hugging Face checkpoints in and out (BERT, RoBERTa, GPT-2, T5 v1.0 and v1.1, XLNet), and sentence-transformers
model directories as embedding runs, with numerical parity.

    from jaxlm.convert import load_hf, save_hf
    config, params, tokenizer = load_hf("path/to/hf_model_dir")        # numpy params, unrolled layout
    save_hf(config, params, "path/to/out_dir")                         # config.json + model.safetensors

Command line (writes / reads jaxlm workdirs, see `python -m jaxlm.convert --help`):

    python -m jaxlm.convert from-hf --model_dir DIR --workdir OUT [--scan_layers]
    python -m jaxlm.convert to-hf --workdir RUN [--step N] --out DIR
    python -m jaxlm.convert to-st --workdir EMBEDDING_RUN [--step N] --out DIR   # SentenceTransformer(DIR)
"""
from jaxlm.convert.hf import ConversionReport, Imported, export_workdir, import_hf, load_hf, save_hf, write_workdir
from jaxlm.convert.sentence_transformers import export_sentence_transformers, import_sentence_transformers

__all__ = ["ConversionReport", "Imported", "export_sentence_transformers", "export_workdir", "import_hf",
           "import_sentence_transformers", "load_hf", "save_hf", "write_workdir"]
