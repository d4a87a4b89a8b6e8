"""XLNet-base: the xlnet-base-cased shapes (12 layers, hidden 768, 12 heads, feed-forward 3072; Yang et al. 2019,
section 3.1) with the pretraining recipe of configs/pretrain/xlnet_large.py (appendix A.3, table 7).

The paper gives no separate pretraining table for the base model (its base-size results in section 3.4 are
ablations on BERT-base's data); everything but the shapes, the batch and the mesh here is table 7's. The batch,
2048 rows, is the value of the train_batch_size flag in the authors' README: a choice of this config, not a
number the paper reports for the base model.

    python -m jaxlm.pretrain --config=configs/pretrain/xlnet_base.py --workdir=gs://BUCKET/xlnet_base
"""
import importlib.util
import os


def _large():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xlnet_large.py")
    spec = importlib.util.spec_from_file_location("xlnet_large", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    c = _large().get_config()
    c.model.size = "base"
    c.train.batch_size = 2048
    c.mesh.fsdp = 1
    return c
