"""The package is layered: a module imports only from its own layer or the layers below it, so that a concept
lives in one place and nothing low (a model, the data pipeline) reaches up into what uses it (an objective, a
command). Parsed from the source with `ast`: no import side effects."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxlm")

# Lowest first. A module may import its own layer and any layer below.
LAYERS = {
    "jaxlm.paths": 0, "jaxlm.huge_pages": 0, "jaxlm.cli": 0, "jaxlm.run_lock": 1,
    "jaxlm.sharding": 1,
    "jaxlm.layers": 2,
    "jaxlm.models": 3,
    "jaxlm.data": 4,
    "jaxlm.decoding": 5,
    "jaxlm.objectives": 6,
    "jaxlm.train": 7,
    "jaxlm.workdir": 8,
    "jaxlm.tasks": 9,
    "jaxlm.convert": 10,
    "jaxlm.config_defaults": 11,
    # the commands (python -m jaxlm.X)
    "jaxlm.pretrain": 11, "jaxlm.finetune": 11, "jaxlm.evaluate": 11, "jaxlm.predict": 11, "jaxlm.generate": 11,
    "jaxlm.embed": 11, "jaxlm.eval_harness": 11, "jaxlm.tokenizer": 11, "jaxlm.__init__": 11, "jaxlm.bias": 11,
    "jaxlm.sweep": 11,
}


def layer_of(module: str) -> tuple[str, int]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    raise KeyError(module)


def modules():
    for root, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__") if rel != "jaxlm.__init__" else rel, path


def jaxlm_imports(path: str):
    """(line, imported module) of every `import jaxlm...` / `from jaxlm... import` in the file, at any depth."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("jaxlm"):
            if node.module == "jaxlm":  # from jaxlm import sharding, workdir
                yield from ((node.lineno, f"jaxlm.{a.name}") for a in node.names)
            else:
                yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.startswith("jaxlm"))


def test_every_module_has_a_layer():
    unplaced = []
    for module, _ in modules():
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for module, path in modules():
        home, level = layer_of(module)
        for line, imported in jaxlm_imports(path):
            target, target_level = layer_of(imported)
            if target_level > level:
                upward.append(f"{os.path.relpath(path, PACKAGE)}:{line}: {home} (layer {level}) imports {imported} "
                              f"(layer {target_level})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_check_catches_an_upward_import(tmp_path):
    """The parser sees function-local and `from jaxlm import x` imports, and the layer map ranks them."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from jaxlm import workdir\n    import jaxlm.tasks.base\n")
    found = list(jaxlm_imports(str(source)))
    assert found == [(2, "jaxlm.workdir"), (3, "jaxlm.tasks.base")]
    assert layer_of("jaxlm.models.bert")[1] < layer_of("jaxlm.workdir")[1]
    with pytest.raises(KeyError):
        layer_of("jaxlm.nowhere")
