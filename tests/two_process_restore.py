"""One process of the two-process backbone restore (tests/test_pretrain.py): a BERT classification model's
params on a 2-process mesh, the backbone restored from a pretraining run straight onto their shardings; every
shard this process holds must equal the same slice of the stored array (read whole, for the check only).

    python tests/two_process_restore.py WORKDIR PORT PROCESS_ID
"""
import sys

import jax
import numpy as np
import optax
from flax.traverse_util import flatten_dict

from jaxlm import sharding as shd
from jaxlm.tasks.finetuning import task_model
from jaxlm.train import create_train_state
from jaxlm.workdir import read_model_config, read_params, restore_backbone


def main(workdir: str, port: str, process_id: str) -> None:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
    mesh = shd.make_mesh(2, 2, 2)
    model_config, _ = read_model_config(workdir)
    model = task_model(model_config, "classification", 3)
    ones = np.ones((1, 16), np.int32)
    state, _ = create_train_state(lambda rng: model.init(rng, ones), optax.sgd(0.1),
                                  jax.random.key(0), mesh)
    params, report = restore_backbone(state.params, workdir, verbose=False)
    stored, _, _ = read_params(workdir)  # numpy, whole: what every shard must be a slice of
    stored = flatten_dict(stored["bert"], sep="/")
    checked = 0
    for path, leaf in flatten_dict(params["backbone"], sep="/").items():
        assert len(leaf.sharding.device_set) == 8, path  # the global mesh, not one host's copy
        for shard in leaf.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), stored[path][shard.index], err_msg=path)
            checked += 1
    assert report.loaded and checked > 0
    print(f"process {process_id}: {checked} shards of {len(report.loaded)} restored parameters checked")


if __name__ == "__main__":
    main(*sys.argv[1:])
