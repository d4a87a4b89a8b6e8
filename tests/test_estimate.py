"""benchmarks/estimate.py against a hand computation, and the README's reproduction table against the script."""
import importlib.util
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_estimate():
    spec = importlib.util.spec_from_file_location("estimate_under_test",
                                                  os.path.join(ROOT, "benchmarks", "estimate.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


est = _load_estimate()


def _bert_base_params(vocab=30522, d=768, layers=12, ff=3072, positions=512):
    """BERT-base with its MLM and NSP heads, by hand."""
    dense = lambda i, o: i * o + o  # noqa: E731
    norm = 2 * d
    layer = 4 * dense(d, d) + dense(d, ff) + dense(ff, d) + 2 * norm  # q, k, v, out; mlp in, out; 2 LayerNorms
    embeddings = vocab * d + positions * d + 2 * d + norm  # tokens, positions, token types, LayerNorm
    pooler = dense(d, d)
    mlm_head = dense(d, d) + norm + vocab  # transform, its LayerNorm, output bias (kernel tied to embeddings)
    nsp_head = dense(d, 2)
    return embeddings + layers * layer + pooler + mlm_head + nsp_head


def _bert_base_flops_per_example(seq_len, predictions, vocab=30522, d=768, layers=12, ff=3072):
    """Training FLOPs (forward + backward = 3 x forward, 2 per multiply-add) of one MLM + NSP row by hand: the
    layers' matmuls over every token, attention scores and values, the pooler on [CLS], the MLM head (transform
    and tied vocabulary projection) at the masked slots only, the NSP classifier."""
    matmuls = layers * (4 * d * d + 2 * d * ff) * seq_len
    attention = layers * 2 * d * seq_len * seq_len  # QK^T and AV
    return 6 * matmuls + 6 * attention + 6 * d * d + 6 * (d * d + vocab * d) * predictions + 6 * d * 2


def test_bert_base_phase1_on_v4_32_matches_hand_computation():
    config = est.load("configs/pretrain/bert_base.py:phase1")
    e = est.estimate(config, est.parse_hardware("v4-32"), mfu=0.4)
    assert e.model.total_params == _bert_base_params() == 110_106_428
    per_token = _bert_base_flops_per_example(128, 20) / 128
    assert e.flops_per_token == pytest.approx(per_token, rel=1e-12)
    assert round(per_token / 1e6) == 546  # ~6 x 85M layer weights + attention + the 20 projected slots' share
    assert e.tokens == 256 * 128 * 900_000
    assert e.flops == pytest.approx(per_token * 256 * 128 * 900_000, rel=1e-12)
    seconds = per_token * 256 * 128 * 900_000 / (16 * 275e12 * 0.4)  # 16 chips of a v4-32
    assert e.seconds == pytest.approx(seconds, rel=1e-12)
    assert e.tokens_per_second == pytest.approx(16 * 275e12 * 0.4 / per_token, rel=1e-12)
    assert e.usd_on_demand == pytest.approx(seconds / 3600 * 16 * 3.22, rel=1e-12)
    assert e.usd_spot == pytest.approx(e.usd_on_demand * 0.4, rel=1e-12)


def test_phase2_counts_only_its_own_steps_at_512_tokens():
    config = est.load("configs/pretrain/bert_base.py:phase2")
    e = est.estimate(config, est.parse_hardware("v5p-32"), mfu=0.5, start_step=900_000)
    per_token = _bert_base_flops_per_example(512, 80) / 512
    assert (e.steps, e.tokens) == (100_000, 256 * 512 * 100_000)
    assert e.seconds == pytest.approx(per_token * e.tokens / (16 * 459e12 * 0.5), rel=1e-12)
    with pytest.raises(ValueError, match="start_step=1000000 is not below config.train.num_steps=1000000"):
        est.estimate(config, est.parse_hardware("v4-32"), start_step=1_000_000)


def test_hardware_names():
    h100 = est.parse_hardware("8xH100")
    assert (h100.chips, h100.hosts, h100.peak_flops_per_chip, h100.usd_per_hour) == (8, 1, 989e12,
                                                                                     pytest.approx(8 * 11.06))
    v5e = est.parse_hardware("v5e-256")
    assert (v5e.name, v5e.chips, v5e.hosts, v5e.peak_flops_per_chip) == ("v5litepod-256", 256, 64, 197e12)
    assert est.parse_hardware("16xh200").usd_per_hour is None  # no list price assumed: cost shows '-'
    with pytest.raises(ValueError, match="unknown TPU accelerator type 'v7-8'.*8xH100"):
        est.parse_hardware("v7-8")
    with pytest.raises(ValueError, match="mfu=1.5"):
        est.estimate(est.load("configs/pretrain/quickstart.py"), v5e, mfu=1.5)


def test_readme_reproduction_table_is_the_scripts_output(capsys):
    assert est.main(["--all", "--markdown"]) == 0
    table = capsys.readouterr().out.split("\n\n")[0].strip()
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Reproduction configs", 1)[1]
    assert table in section, "README's table is stale: rerun `python benchmarks/estimate.py --all --markdown`"
    assert re.search(r"\| bert_base\.py:phase1 \| v4-32 \| 16 \| 4 \| 110M \| 546M \| 900K \| 29\.5B \| 1\.61e\+19 \| "
                     r"3\.22M \| 2\.5 h \| \$131 \| \$52 \|", table)


def test_tpu_readme_throughput_table_is_the_scripts_output():
    config = est.load("configs/pretrain/bert_base.py:phase1")
    readme = open(os.path.join(ROOT, "tpu", "README.md"), encoding="utf-8").read()
    for hw in ("v4-32", "v5e-32", "v5p-32", "v6e-16", "8xH100", "8xA100"):
        e = est.estimate(config, est.parse_hardware(hw), mfu=0.4)
        row = est.rows([e])[0]
        line = "| " + " | ".join((row[1], row[2], row[3], row[9], row[10], row[11], row[12])) + " |"
        assert line in readme, f"tpu/README.md is stale for {hw}: expected {line}"


def test_the_footprint_columns_are_power_times_time_times_pue_at_the_regions_grid(capsys):
    """Energy and CO2e before a run starts, from the accounting's tables: v4 at 170 W a chip, us-central2's grid."""
    config = est.load("configs/pretrain/bert_base.py:phase1")
    e = est.estimate(config, est.parse_hardware("v4-32"), mfu=0.4, region="us-central2")
    f = e.footprint
    assert f["power_w_per_device"] == 170.0 and f["region"] == "us-central2"
    assert f["facility_energy_kwh"] == pytest.approx(170.0 * 16 * e.hours / 1000 * f["pue"], rel=1e-9)
    assert f["co2e_kg"] == pytest.approx(f["facility_energy_kwh"] * f["carbon_intensity_g_per_kwh"] / 1000, rel=1e-9)
    world = est.estimate(config, est.parse_hardware("v4-32"), mfu=0.4).footprint
    assert world["region"] == "world-average" and world["carbon_intensity_g_per_kwh"] == 475.0
    row = est.rows([e])[0]
    assert row[-2] == f"{f['facility_energy_kwh']:.3g} kWh" and row[-1] == f"{f['co2e_kg']:.3g} kg"
    assert est.main(["configs/pretrain/gpt2_small.py", "--region", "mars"]) == 2
    assert "unknown region 'mars'" in capsys.readouterr().err
