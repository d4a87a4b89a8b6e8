"""Orbax checkpoints: the train state, the data iterator position and the run config.

Layout (one directory per step, written atomically by Orbax: `<step>.orbax-checkpoint-tmp-*` and
renamed when complete, so an interrupted save is never seen by `latest_step`):

    workdir/checkpoints/<step>/state/        TrainState arrays (StandardSave, tensorstore/OCDBT)
    workdir/checkpoints/<step>/data_iter/    process_<i>-of-<n>.json, one per process
    workdir/checkpoints/<step>/config/       the run config as JSON
    workdir/checkpoints/<step>/metrics/      eval metrics (only when best-by-metric is on)

Restoring onto any mesh: the restore target is a tree of `jax.ShapeDtypeStruct` whose `.sharding` is
the *new* mesh's sharding (`StateLayout.abstract`); Orbax reads each target shard from the stored
array, whatever the mesh it was written from.

The data iterator is stored by our own per-process handler rather than JsonSave (which writes on
process 0 only, losing the other hosts' positions) or grain's handler (which accepts only grain's
own iterator classes). Any iterator with `get_state()` / `set_state(state)` works; the state may be a
JSON-able dict (grain DatasetIterator) or bytes (grain DataLoaderIterator).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as pp

from jaxlm.paths import resolved
from jaxlm.train.state import StateLayout, TrainState

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


# ---------------------------------------------------------------------------------------------
# Data-iterator item: one JSON file per process.

def _iter_file(directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class DataIterHandler(ocp.CheckpointHandler):
    """Saves `iterator.get_state()` per process; restores with `iterator.set_state(...)`."""

    def save(self, directory: epath.Path, args: "DataIterSave"):
        state = args.item.get_state()
        if isinstance(state, bytes):
            try:
                record = {"format": "utf8", "state": state.decode("utf-8")}
            except UnicodeDecodeError:
                record = {"format": "base64", "state": base64.b64encode(state).decode("ascii")}
        else:
            record = {"format": "json", "state": state}
        _iter_file(directory).write_text(json.dumps(record))

    def restore(self, directory: epath.Path, args: "DataIterRestore"):
        path = _iter_file(directory)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no data-iterator state for this process "
                                    f"(was the checkpoint written with a different process count?)")
        record = json.loads(path.read_text())
        state = {"utf8": lambda s: s.encode("utf-8"), "base64": base64.b64decode,
                 "json": lambda s: s}[record["format"]](record["state"])
        args.item.set_state(state)
        if hasattr(args.item, "start_prefetch"):  # grain iterators restart their prefetch
            args.item.start_prefetch()
        return args.item

    def metadata(self, directory: epath.Path):
        return None

    def finalize(self, directory: epath.Path):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(DataIterHandler, for_save=True)
@dataclasses.dataclass
class DataIterSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(DataIterHandler, for_restore=True)
@dataclasses.dataclass
class DataIterRestore(ocp.args.CheckpointArgs):
    item: Any


# ---------------------------------------------------------------------------------------------

def make_checkpoint_manager(workdir: str, *, max_to_keep: int | None = 3, async_save: bool = True,
                            best_metric: str | None = None, best_mode: str = "min",
                            keep_best: int = 1) -> ocp.CheckpointManager:
    """CheckpointManager for workdir/checkpoints.

    Keeps the last `max_to_keep` steps; with `best_metric` (a key of the metrics passed to
    `save_checkpoint`) it also keeps the `keep_best` best ones, so resuming always finds the latest.
    Stale tmp directories of killed saves are removed on creation.
    """
    if best_mode not in ("min", "max"):
        raise ValueError(f"best_mode={best_mode!r}; expected 'min' or 'max'")
    policies: list = [pp.LatestN(n=max_to_keep)]
    best_fn = None
    if best_metric is not None:
        best_fn = lambda m: float(m[best_metric])  # noqa: E731
        policies.append(pp.BestN(get_metric_fn=best_fn, reverse=(best_mode == "min"), n=keep_best,
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save, best_fn=best_fn, best_mode=best_mode,
        preservation_policy=pp.AnyPreservationPolicy(policies), cleanup_tmp_directories=True,
        create=True)
    return ocp.CheckpointManager(resolved(workdir) / CHECKPOINT_DIR, options=options)


def jsonable(config: Any) -> Any:
    """ConfigDict / dataclass / dict -> plain JSON types (unknown objects become their repr)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return json.loads(json.dumps(config, default=repr))


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any, *, data_iter: Any = None,
                    config: Any = None, metrics: Mapping[str, float] | None = None) -> bool:
    """Starts saving (async: returns once arrays are copied to host). Returns False if `step` exists."""
    step = int(step)
    if step in manager.all_steps():
        return False
    items = {"state": ocp.args.StandardSave(state_items(state))}
    if data_iter is not None and hasattr(data_iter, "get_state"):
        items["data_iter"] = DataIterSave(data_iter)
    if config is not None:
        items["config"] = ocp.args.JsonSave(jsonable(config))
    if metrics is not None:
        metrics = {k: float(v) for k, v in metrics.items()}
    return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def state_items(state: Any) -> Any:
    """A TrainState as the dict of its fields that Orbax stores (memory only when there is one), so that every
    checkpoint, written before TrainState had a memory or after, has the same layout; other trees as they are."""
    if not isinstance(state, TrainState):
        return state
    items = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if items["memory"] is None:
        del items["memory"]
    return items


def abstract_like(target: Any) -> Any:
    """Restore target: StateLayout -> its abstract state; live arrays -> ShapeDtypeStruct + sharding."""
    if isinstance(target, StateLayout):
        return target.abstract

    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree_util.tree_map(one, target)


@dataclasses.dataclass
class Restored:
    step: int
    state: Any
    config: dict | None
    data_iter_restored: bool


class CheckpointMismatchError(ValueError):
    """The stored state does not fit the run's model (another size or family): not damage, so no fallback."""


def _flat_shapes(tree: Any) -> dict[str, tuple]:
    def key(path):
        return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)

    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {key(path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def _flat_config(config: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in (config or {}).items():
        if isinstance(v, Mapping):
            out.update(_flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _changed_model_keys(saved: Any, current: Any) -> list[str]:
    """`config.model.hidden_size: 32 in the checkpoint, 64 now` for every model key that differs."""
    before, now = _flat_config(saved), _flat_config(jsonable(current) if current is not None else None)
    keys = sorted(k for k in set(before) & set(now) if k.split(".")[0] in ("model", "model_config")
                  and before[k] != now[k])
    return [f"config.{k}: {before[k]!r} in the checkpoint, {now[k]!r} now" for k in keys]


def check_params_fit(step_dir: epath.Path, target: Any, config: Any = None) -> None:
    """Compares the stored parameter shapes (metadata only) with the restore target's; a difference is a
    CheckpointMismatchError naming the parameter, both shapes and the config keys that changed."""
    abstract = abstract_like(target)
    params = getattr(abstract, "params", None)
    if params is None and isinstance(abstract, Mapping):
        params = abstract.get("params")
    if params is None:
        return
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(step_dir / "state")
    item = getattr(metadata, "item_metadata", metadata)
    tree = getattr(item, "tree", item)
    if tree is None:  # orbax returns no tree, rather than an error, when it cannot read the metadata
        state_dir = step_dir / "state"
        raise ValueError(f"{state_dir / '_METADATA'} is missing" if not (state_dir / "_METADATA").exists() else
                         f"{state_dir}: its _METADATA or the array files it indexes (manifest.ocdbt, d/) cannot "
                         "be read")
    if not isinstance(tree, Mapping) or "params" not in tree:
        raise ValueError(f"{step_dir / 'state'}: the stored state has no 'params'")
    items = state_items(abstract)
    if isinstance(items, Mapping) and set(items) != set(tree):
        extra, missing = sorted(set(tree) - set(items)), sorted(set(items) - set(tree))
        hint = " (a memory: was it written with another config.model.mem_len?)" if "memory" in extra + missing else ""
        raise CheckpointMismatchError(f"{step_dir}: the stored state holds {sorted(tree)}, this run's "
                                      f"{sorted(items)}: {extra or missing} differ{hint}")
    stored, wanted = _flat_shapes(tree["params"]), _flat_shapes(params)
    problems = [f"{k}: stored {stored[k]}, the model wants {wanted[k]}" for k in sorted(set(stored) & set(wanted))
                if stored[k] != wanted[k]]
    problems += [f"{k}: not in the checkpoint" for k in sorted(set(wanted) - set(stored))]
    problems += [f"{k}: in the checkpoint, not in the model" for k in sorted(set(stored) - set(wanted))]
    if not problems:
        return
    saved_config = None
    if (step_dir / "config").exists():
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
            saved_config = checkpointer.restore(step_dir / "config")
    changed = _changed_model_keys(saved_config, config)
    because = ("; changed since: " + "; ".join(changed)) if changed else ""
    raise CheckpointMismatchError(
        f"{step_dir}: the checkpoint does not fit this run's model ({len(problems)} parameter(s) differ): "
        f"{'; '.join(problems[:3])}{because}. Resume with the checkpoint's model settings, or use another workdir")


def _restore_step(manager: ocp.CheckpointManager, target: Any, step: int, data_iter: Any, config: Any
                  ) -> Restored:
    step_dir = epath.Path(manager.directory) / str(step)
    check_params_fit(step_dir, target, config)
    abstract = abstract_like(target)
    items = {"state": ocp.args.StandardRestore(state_items(abstract))}
    has_iter = (step_dir / "data_iter").exists()
    if data_iter is not None and has_iter:
        items["data_iter"] = DataIterRestore(data_iter)
    elif data_iter is not None:
        log.warning("checkpoint %s has no data_iter item; the data iterator starts from the beginning", step_dir)
    if (step_dir / "config").exists():
        items["config"] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    state = restored["state"]
    if isinstance(abstract, TrainState):
        state = TrainState(**state)
    return Restored(step=step, state=state, config=restored.get("config"),
                    data_iter_restored=data_iter is not None and has_iter)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def restore_checkpoint(manager: ocp.CheckpointManager, target: Any, *, step: int | None = None,
                       data_iter: Any = None, config: Any = None, set_aside_damaged: bool = True
                       ) -> Restored | None:
    """Restores `step` (default: the newest readable one) onto the shardings carried by `target`; None if there
    is no checkpoint.

    `target`: StateLayout, an abstract state (ShapeDtypeStruct leaves with .sharding) or a live state.
    If `data_iter` is given and the checkpoint holds its state, the iterator is moved there. `config`: the run's
    config, to name the keys that changed when the stored parameters do not fit the model.

    Resuming (no `step`) survives a damaged newest step, as a preempted pod needs: a step that cannot be read (a
    truncated array file, a missing _METADATA, garbage in an item) is logged with its error and moved, not
    deleted, to DAMAGED_DIR beside the checkpoints once an older step has been restored, so that the resumed run
    can save that step again (readers pass set_aside_damaged=False and leave it where it is). Parameters that do
    not fit the model are an error, not damage.
    """
    if step is not None:
        return _restore_step(manager, target, int(step), data_iter, config)
    damaged: list[tuple[int, str]] = []
    for candidate in sorted(manager.all_steps(), reverse=True):
        try:
            restored = _restore_step(manager, target, candidate, data_iter, config)
        except CheckpointMismatchError:
            raise
        except Exception as e:  # anything a damaged step raises (tensorstore, orbax, JSON)
            where = epath.Path(manager.directory) / str(candidate)
            log.warning("checkpoint step %d (%s) cannot be read: %s", candidate, where, _first_line(e))
            damaged.append((candidate, _first_line(e)))
            continue
        if damaged and set_aside_damaged:
            moved = _set_aside(manager, [s for s, _ in damaged])
            log.warning("resumed from step %d, the newest readable checkpoint; damaged step(s) %s kept in %s",
                        candidate, [s for s, _ in damaged], moved)
        elif damaged:
            log.warning("read step %d, the newest readable checkpoint", candidate)
        return restored
    if damaged:
        raise RuntimeError(f"no checkpoint in {manager.directory} can be read (nothing was moved or deleted): "
                           + "; ".join(f"step {s}: {why}" for s, why in damaged))
    return None


DAMAGED_DIR = "damaged_checkpoints"


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> epath.Path:
    """Moves damaged step directories out of the manager's sight (process 0; the others wait)."""
    checkpoints = epath.Path(manager.directory)
    destination = checkpoints.parent / DAMAGED_DIR
    if jax.process_index() == 0:
        destination.mkdir(parents=True, exist_ok=True)
        for step in steps:
            target = destination / str(step)
            suffix = 1
            while target.exists():  # an earlier fallback set the same step aside
                target, suffix = destination / f"{step}.{suffix}", suffix + 1
            (checkpoints / str(step)).rename(target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jaxlm_damaged_checkpoints_set_aside")
    manager.reload()
    return destination


def restore_latest(workdir_or_manager: str | ocp.CheckpointManager, target: Any, *,
                   data_iter: Any = None) -> Restored | None:
    """Latest complete checkpoint in workdir (or manager) restored onto `target`'s shardings."""
    if isinstance(workdir_or_manager, ocp.CheckpointManager):
        return restore_checkpoint(workdir_or_manager, target, data_iter=data_iter)
    directory = resolved(workdir_or_manager) / CHECKPOINT_DIR
    if not directory.exists():
        return None
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    with ocp.CheckpointManager(directory, options=options) as manager:
        return restore_checkpoint(manager, target, data_iter=data_iter, set_aside_damaged=False)
