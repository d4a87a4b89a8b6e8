"""The README's Python example runs as printed (keeps the README true)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs(capsys):
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out.split("\n")
    assert out[0].startswith("bert ") and out[1].startswith("gpt2 ")
    for line in out[:2]:
        loss = float(line.split()[1])
        assert 5.0 < loss < 10.0  # near ln(1000) (+ ln 2 for NSP) for random weights
