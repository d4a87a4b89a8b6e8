"""Reading and writing Hugging Face weight files as numpy arrays.

Reads model.safetensors (no torch needed: safetensors.numpy; bfloat16 comes back as ml_dtypes.bfloat16),
pytorch_model.bin (needs torch), and either one sharded through its `*.index.json`. Writes safetensors,
sharded with an index when a size limit is given, in the layout `from_pretrained` reads.
"""
from __future__ import annotations

import json
import os

import numpy as np

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
UNSUPPORTED_WEIGHTS = ("tf_model.h5", "flax_model.msgpack", "model.ckpt.index")


def read_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: a Hugging Face model directory has a config.json "
                                f"(directory holds: {_listing(model_dir)})")
    with open(path) as f:
        return json.load(f)


def _listing(model_dir: str) -> list[str]:
    return sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else ["<not a directory>"]


def weight_files(model_dir: str) -> list[str]:
    """The weight files to read, preferring safetensors. Raises naming what the directory holds."""
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (PYTORCH, PYTORCH_INDEX)):
        if os.path.isfile(os.path.join(model_dir, single)):
            return [os.path.join(model_dir, single)]
        index_path = os.path.join(model_dir, index)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index_path}: no 'weight_map' (tensor name -> shard file)")
            files = sorted(set(weight_map.values()))
            missing = [name for name in files if not os.path.isfile(os.path.join(model_dir, name))]
            if missing:
                raise FileNotFoundError(f"{index_path} names shard file(s) {missing} that are not in {model_dir}")
            return [os.path.join(model_dir, name) for name in files]
    other = [name for name in UNSUPPORTED_WEIGHTS if os.path.exists(os.path.join(model_dir, name))]
    hint = f"; {other} are TensorFlow/Flax weights, which jaxlm does not read" if other else ""
    raise FileNotFoundError(f"{model_dir}: no {SAFETENSORS}, {SAFETENSORS_INDEX}, {PYTORCH} or {PYTORCH_INDEX} "
                            f"(directory holds: {_listing(model_dir)}){hint}")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:  # a truncated download: safetensors' own message names no file
        raise ValueError(f"{path} ({os.path.getsize(path):,} bytes) cannot be read as safetensors: {e} "
                         "(an interrupted download? fetch the file again)") from e


def _read_pytorch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: reading pytorch_model.bin needs torch (a CPU build is enough), or convert the "
                          "checkpoint to model.safetensors first; safetensors files need no torch") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path} ({os.path.getsize(path):,} bytes) cannot be read as a PyTorch state dict: {e} "
                         "(an interrupted download? fetch the file again)") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits, losslessly
            import ml_dtypes

            out[name] = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[name] = tensor.numpy()
    return out


def read_tensors(model_dir: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """All tensors of the checkpoint in `model_dir` (name -> array) and the files they came from."""
    files = weight_files(model_dir)
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        part = _read_safetensors(path) if path.endswith(".safetensors") else _read_pytorch(path)
        duplicated = sorted(set(part) & set(tensors))
        if duplicated:
            raise ValueError(f"{path}: tensors {duplicated[:5]} also appear in another shard")
        tensors.update(part)
    return tensors, files


def write_safetensors(tensors: dict[str, np.ndarray], out_dir: str, max_shard_bytes: int | None = None) -> list[str]:
    """model.safetensors, or model-0000k-of-0000n.safetensors + model.safetensors.index.json when the tensors
    exceed `max_shard_bytes`. Returns the files written."""
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    total = sum(v.nbytes for v in tensors.values())
    metadata = {"format": "pt"}  # transformers' from_pretrained expects this tag
    if not max_shard_bytes or total <= max_shard_bytes:
        path = os.path.join(out_dir, SAFETENSORS)
        save_file(tensors, path, metadata=metadata)
        return [path]
    shards: list[dict] = [{}]
    size = 0
    for name, value in tensors.items():
        if shards[-1] and size + value.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    written, weight_map = [], {}
    for k, shard in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(out_dir, name), metadata=metadata)
        weight_map.update({t: name for t in shard})
        written.append(os.path.join(out_dir, name))
    index = os.path.join(out_dir, SAFETENSORS_INDEX)
    with open(index, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    return written + [index]
