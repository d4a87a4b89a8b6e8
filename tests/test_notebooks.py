"""The notebooks in notebooks/ run top to bottom, offline, with their small settings and a few steps.

Each runs in a fresh Jupyter kernel (nbclient) on one CPU device, with its TFDS data and runs in a temporary
directory. Structure checks (badge, install cell, SMALL switch) are fast; the executions are marked slow.
"""
import importlib.util
import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the `test` extra (nbformat, nbclient, "
                                                  "ipykernel)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
SST2 = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "glue", "SST-2", "train.tsv"))
SQUAD = os.path.join(os.environ.get("JAXLM_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data"), "squad",
                     "dev-v1.1.json")
# notebook -> what its last cells print when everything worked
EXPECTED = {
    "quickstart.ipynb": "the reloaded model makes the same predictions",
    "import_hf.ipynb": "parity within 1e-4: OK",
    "finetune.ipynb": "accuracy",
    "generate.ipynb": "generate notebook: OK",
    "retrieval.ipynb": "retrieval notebook: OK",
}


def _present():
    names = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
    assert set(names) <= set(EXPECTED), f"a notebook without a test: {sorted(set(names) - set(EXPECTED))}"
    return names


def _skip_reason(name):
    if name == "import_hf.ipynb":
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            return f"import_hf.ipynb builds a Hugging Face model: {missing} not installed (the `hf` extra)"
    if name == "finetune.ipynb" and not os.path.exists(SST2):
        return f"finetune.ipynb offline reads SST-2 from {SST2}, which is absent"
    if name == "retrieval.ipynb" and not os.path.exists(SQUAD):
        return f"retrieval.ipynb offline reads SQuAD v1.1 dev from {SQUAD}, which is absent"
    return None


def test_the_notebooks_exist():
    assert {"quickstart.ipynb", "import_hf.ipynb"} <= set(_present())
    if os.path.exists(os.path.join(ROOT, "jaxlm", "finetune.py")):
        assert "finetune.ipynb" in _present()
    if os.path.exists(os.path.join(ROOT, "jaxlm", "generate.py")):
        assert "generate.ipynb" in _present()


@pytest.mark.parametrize("name", _present())
def test_notebook_structure(name):
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert f"https://colab.research.google.com/github/<org>/jaxlm/blob/main/notebooks/{name}" in first.source
    setup = nb.cells[1].source
    assert nb.cells[1].cell_type == "code"
    for needed in ('importlib.util.find_spec("jaxlm") is None', '"-e", REPO', "git\", \"clone", "IN_COLAB",
                   "jax.devices()[0].platform"):
        assert needed in setup, f"{name}: setup cell lacks {needed!r}"
    settings = next(c for c in nb.cells[2:] if c.cell_type == "code").source
    assert 'SMALL = os.environ.get("JAXLM_NOTEBOOK_FULL", "0") != "1"' in settings
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} is saved with outputs"
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.slow
@pytest.mark.parametrize("name", _present())
def test_notebook_runs(name, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    reason = _skip_reason(name)
    if reason:
        pytest.skip(reason)
    # The kernel inherits this environment: one CPU device, data and runs in tmp, a few steps, no network.
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "").strip())
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tensorflow_datasets"))
    monkeypatch.setenv("JAXLM_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("JAXLM_NOTEBOOK_STEPS", "20")
    monkeypatch.setenv("JAXLM_NOTEBOOK_OFFLINE", "1")
    monkeypatch.delenv("JAXLM_NOTEBOOK_FULL", raising=False)
    runs = os.path.join(ROOT, "runs")
    before = set(os.listdir(runs)) if os.path.isdir(runs) else set()
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": NOTEBOOKS}}).execute()  # raises CellExecutionError
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert EXPECTED[name] in text, text[-2000:]
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == {"quickstart.ipynb": 1, "import_hf.ipynb": 0, "finetune.ipynb": 1,
                           "generate.ipynb": 0, "retrieval.ipynb": 0}[name]
    after = set(os.listdir(runs)) if os.path.isdir(runs) else set()
    assert after == before, f"the notebook wrote into the repository: {sorted(after - before)}"
