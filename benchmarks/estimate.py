"""How long and how much: the FLOPs, time, cost, energy and carbon of a pretraining config on a hardware slice, at
a stated MFU, before the run starts.

    .venv/bin/python benchmarks/estimate.py configs/pretrain/bert_base.py:phase1 --slice v4-32 --slice v5e-32
    .venv/bin/python benchmarks/estimate.py configs/pretrain/gpt2_small.py --slice 8xH100 --mfu 0.5
    .venv/bin/python benchmarks/estimate.py configs/pretrain/t5_base.py --region europe-north1 [--pue 1.1]
    .venv/bin/python benchmarks/estimate.py --all [--markdown]   # every reproduction recipe, its suggested slice

FLOPs are the training loop's own analytic count (the objective's `train_flops_per_example`, from the model
family: 6 x the matmul weights each token goes through, forward and backward, + 12 x layers x attention width x
keys per token for the attention scores and values; the vocabulary projection only where the objective projects,
e.g. MLM's masked slots; T5's encoder over its inputs and decoder over its targets), times batch x steps. So "at
40% MFU" means "if the run reports MFU 0.40 in metrics.jsonl". Parameter counts come from the real model
(jax.eval_shape of its init: no memory, no device). Times assume the slice does nothing but train steps (no
evaluation, checkpoint or start-up time); costs are chips x hours x list price. Energy and CO2e come from the
tables a run's own accounting uses when its hardware has no energy counter (jaxlm.train.accounting.estimate_run:
a typical power per chip x chips x hours, times the data centre's PUE, times the grid's gCO2e/kWh of --region, else
the config's config.train.carbon_region, else the world average).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing jaxlm

from jaxlm.config_defaults import load_config_file  # noqa: E402
from jaxlm.models import family_of  # noqa: E402
from jaxlm.models.common import count_params  # noqa: E402
from jaxlm.models.registry import model_config_from_section  # noqa: E402
from jaxlm.objectives import objective_from_config  # noqa: E402
from jaxlm.train.accounting import estimate_run  # noqa: E402
from jaxlm.train.metrics import peak_flops_per_device  # noqa: E402
from jaxlm.workdir import abstract_params  # noqa: E402

# USD per chip-hour (per GPU-hour), on-demand list prices in US regions as published on cloud.google.com/tpu/pricing
# and the Compute Engine GPU pricing page; recalled, not fetched: check them before you budget. Spot prices move
# (up to once every 30 days) and differ by region; SPOT_FRACTION of on-demand is an assumption, not a price list.
PRICES_AS_OF = "2025"
ON_DEMAND_USD_PER_CHIP_HOUR = {"v4": 3.22, "v5e": 1.20, "v5p": 4.20, "v6e": 2.70, "a100": 3.67, "h100": 11.06,
                               "h200": None}
SPOT_FRACTION = 0.40
# Names as jax reports device_kind, for jaxlm.train.metrics.peak_flops_per_device (one table for MFU and here).
DEVICE_KIND = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5p": "TPU v5p", "v6e": "TPU v6 lite",
               "a100": "NVIDIA A100-SXM4-80GB", "h100": "NVIDIA H100 80GB HBM3", "h200": "NVIDIA H200"}

# The reproduction recipes and the slice their docstrings suggest. start_step: phase 2 continues phase 1's
# step counter (config.train.init_from), so it trains num_steps - 900,000 steps.
RECIPES = (
    ("configs/pretrain/bert_base.py:phase1", "v4-32", 0),
    ("configs/pretrain/bert_base.py:phase2", "v4-32", 900_000),
    ("configs/pretrain/bert_large.py:phase1", "v4-64", 0),
    ("configs/pretrain/bert_large.py:phase2", "v4-64", 900_000),
    ("configs/pretrain/roberta_base.py", "v4-128", 0),
    ("configs/pretrain/gpt2_small.py", "v4-32", 0),
    ("configs/pretrain/gpt2_medium.py", "v4-64", 0),
    # The T5 docstrings name no slice: v4-32 (16 chips, 8 sequences of 512 each per step) is assumed.
    ("configs/pretrain/t5_small.py", "v4-32", 0),
    ("configs/pretrain/t5_base.py", "v4-32", 0),
    # XLNet-large's paper slice is 512 TPU v3 chips (section 3.1); a v4-512 (256 chips) is the nearest listed.
    ("configs/pretrain/xlnet_base.py", "v4-128", 0),
    ("configs/pretrain/xlnet_large.py", "v4-512", 0),
)


def _pod_module():
    """tpu/pod.py (standard library only) owns the accelerator-name -> chips/hosts rules."""
    if "jaxlm_tpu_pod" not in sys.modules:
        spec = importlib.util.spec_from_file_location("jaxlm_tpu_pod", os.path.join(ROOT, "tpu", "pod.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules["jaxlm_tpu_pod"]


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str  # as given: v4-32, 8xH100
    kind: str  # key of ON_DEMAND_USD_PER_CHIP_HOUR / DEVICE_KIND
    chips: int  # accelerators = JAX devices
    hosts: int
    peak_flops_per_chip: float  # dense bf16

    @property
    def usd_per_hour(self) -> float | None:
        price = ON_DEMAND_USD_PER_CHIP_HOUR[self.kind]
        return None if price is None else price * self.chips


def parse_hardware(name: str) -> Hardware:
    """'v4-32', 'v5e-256', 'v5litepod-16', 'v5p-128', 'v6e-64' (TPU slices) or 'NxH100' / 'NxA100' / 'NxH200'."""
    gpu = re.fullmatch(r"(\d+)\s*x\s*(a100|h100|h200)", name.strip().lower())
    if gpu:
        n, kind = int(gpu.group(1)), gpu.group(2)
        if n < 1:
            raise ValueError(f"hardware {name!r}: need at least one GPU")
        return Hardware(name, kind, n, math.ceil(n / 8), peak_flops_per_device(DEVICE_KIND[kind]))
    try:
        slice_ = _pod_module().parse_accelerator(name)
    except ValueError as e:
        raise ValueError(f"{e}; GPUs are written NxH100, NxA100 or NxH200 (e.g. 8xH100)") from None
    return Hardware(slice_.accelerator_type, slice_.generation, slice_.chips, slice_.hosts,
                    peak_flops_per_device(DEVICE_KIND[slice_.generation]))


@dataclasses.dataclass(frozen=True)
class ModelNumbers:
    family: str
    size: str
    total_params: int
    tokens_per_example: int  # input tokens per row (what tokens/s counts)
    flops_per_token: float  # training FLOPs per (input) token, as the loop counts them


def model_numbers(config) -> ModelNumbers:
    """Parameter count and training FLOPs per token of the config's model (vocabulary: config.model.vocab_size if
    set, else the tokenizer_vocab_size the run would train), from abstract shapes only; the FLOPs as the
    training loop counts them for MFU."""
    model_config = model_config_from_section(config.model, vocab_size=config.data.tokenizer_vocab_size)
    objective = objective_from_config(config).for_model(model_config)  # XLNet's memory: more keys per token
    family = family_of(model_config)
    shapes = abstract_params(family.build(model_config), objective.init_inputs(family, model_config))
    per_token = objective.train_flops_per_example(family, model_config) / objective.tokens_per_example
    return ModelNumbers(family.name, config.model.size or "custom", count_params(shapes), objective.tokens_per_example,
                        per_token)


@dataclasses.dataclass(frozen=True)
class Estimate:
    config: str
    hardware: Hardware
    model: ModelNumbers
    mfu: float
    steps: int
    batch_size: int
    seq_len: int
    flops_per_token: float
    tokens: int
    flops: float
    tokens_per_second: float
    seconds: float
    usd_on_demand: float | None
    usd_spot: float | None
    footprint: dict  # estimate_run's energy / carbon figures (facility_energy_kwh, co2e_kg, region, pue, ...)

    @property
    def hours(self) -> float:
        return self.seconds / 3600


def estimate(config, hardware: Hardware, mfu: float = 0.4, start_step: int = 0, name: str = "",
             region: str | None = None, pue: float | None = None) -> Estimate:
    """FLOPs, time, cost, energy and CO2e of training `config` from `start_step` to config.train.num_steps.
    region / pue: default the config's config.train.carbon_region / pue (unset: the world average, its PUE)."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu}: must be in (0, 1]")
    steps = config.train.num_steps - start_step
    if steps <= 0:
        raise ValueError(f"start_step={start_step} is not below config.train.num_steps={config.train.num_steps}")
    model = model_numbers(config)
    seq_len, batch = model.tokens_per_example, config.train.batch_size
    per_token = model.flops_per_token
    tokens = batch * seq_len * steps
    flops = per_token * tokens
    flops_per_second = hardware.chips * hardware.peak_flops_per_chip * mfu
    seconds = flops / flops_per_second
    usd = None if hardware.usd_per_hour is None else seconds / 3600 * hardware.usd_per_hour
    region = region if region is not None else (config.train.get("carbon_region") or None)
    pue = pue if pue is not None else (config.train.get("pue") or None)
    footprint = estimate_run(hardware.kind, hardware.chips, seconds / 3600, region=region, pue=pue)
    return Estimate(name, hardware, model, mfu, steps, batch, seq_len, per_token, tokens, flops,
                    flops_per_second / per_token, seconds, usd, None if usd is None else usd * SPOT_FRACTION,
                    footprint)


def load(spec: str):
    """A config file path (optionally file.py:arg), relative to the working directory or the repository."""
    path, sep, arg = spec.partition(":")
    if not os.path.exists(path) and os.path.exists(os.path.join(ROOT, path)):
        path = os.path.join(ROOT, path)
    return load_config_file(path + sep + arg)


def _count(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:,.0f}"


def _kwh(x: float) -> str:
    return f"{x / 1000:.3g} MWh" if x >= 1000 else f"{x:.3g} kWh"


def _co2e(kg: float) -> str:
    return f"{kg / 1000:.3g} t" if kg >= 1000 else f"{kg:.3g} kg"


COLUMNS = ("config", "hardware", "chips", "hosts", "params", "FLOPs/token", "steps", "tokens", "train FLOPs",
           "tokens/s", "time", "on-demand", "spot", "energy", "CO2e")


def rows(estimates: list[Estimate]) -> list[tuple[str, ...]]:
    return [(e.config, e.hardware.name, str(e.hardware.chips), str(e.hardware.hosts), _count(e.model.total_params),
             _count(e.flops_per_token), _count(e.steps), _count(e.tokens), f"{e.flops:.3g}",
             _count(e.tokens_per_second), _duration(e.seconds), _usd(e.usd_on_demand), _usd(e.usd_spot),
             _kwh(e.footprint["facility_energy_kwh"]), _co2e(e.footprint["co2e_kg"]))
            for e in estimates]


def format_table(estimates: list[Estimate], markdown: bool = False) -> str:
    body = rows(estimates)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(COLUMNS)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*COLUMNS), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body])


def footnote(mfu: float, estimates: list[Estimate] = ()) -> str:
    prices = ", ".join(f"{k} ${v:.2f}" for k, v in ON_DEMAND_USD_PER_CHIP_HOUR.items() if v is not None)
    power = {e.hardware.kind: e.footprint["power_w_per_device"] for e in estimates}
    grids = sorted({(e.footprint["region"], e.footprint["carbon_intensity_g_per_kwh"], e.footprint["pue"])
                    for e in estimates})
    footprint = ""
    if estimates:
        watts = ", ".join(f"{k} {w:.0f} W" for k, w in power.items())
        at = "; ".join(f"{r} {g:.0f} gCO2e/kWh, PUE {p:.2f}" for r, g, p in grids)
        footprint = (f" Energy: typical power per chip ({watts}) x chips x time x PUE (the chips only: hosts and "
                     f"network are not counted); CO2e at {at}.")
    return (f"At {mfu:.0%} MFU of dense bf16 peak; FLOPs per token = 6 x matmul weights per token + 12 x layers x "
            "width x keys (attention), the vocabulary projection where the objective projects. On-demand USD per "
            f"chip-hour ({PRICES_AS_OF} list prices, US regions): {prices}; spot = {SPOT_FRACTION:.0%} of on-demand "
            "(assumed). Train steps only: no evaluation, checkpointing, compilation or queueing time." + footprint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/estimate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="configs/pretrain/NAME.py[:arg]")
    parser.add_argument("--slice", "--hardware", dest="slices", action="append",
                        help="v4-32, v5e-256, v5p-128, v6e-64, 8xH100, ... (repeatable; default v4-32)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (default 0.4)")
    parser.add_argument("--start_step", type=int, default=0, help="continue from this step (phase 2: 900000)")
    parser.add_argument("--all", action="store_true", help="every reproduction recipe on its suggested slice")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table (for the README)")
    parser.add_argument("--region", default=None, help="grid of the CO2e column: a cloud region (us-central2, "
                        "europe-west4, ...) or gCO2e/kWh (default: the config's config.train.carbon_region, else "
                        "the world average)")
    parser.add_argument("--pue", type=float, default=None, help="data-centre PUE (default: the region's provider's)")
    args = parser.parse_args(argv)
    if args.all == bool(args.config):
        parser.error("give a config file or --all")
    if args.all:
        todo = [(spec, [hw], start) for spec, hw, start in RECIPES]
        if args.slices:
            todo = [(spec, args.slices, start) for spec, _, start in RECIPES]
    else:
        todo = [(args.config, args.slices or ["v4-32"], args.start_step)]
    estimates = []
    try:
        for spec, hardware_names, start in todo:
            config = load(spec)
            name = os.path.relpath(spec, ROOT) if os.path.isabs(spec) else spec
            name = name.replace("configs/pretrain/", "")
            for hw in hardware_names:
                estimates.append(estimate(config, parse_hardware(hw), args.mfu, start, name, args.region, args.pue))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(estimates, args.markdown))
    print()
    print(footnote(args.mfu, estimates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
