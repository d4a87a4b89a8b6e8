"""Compute, energy and carbon accounting for a training run: FLOPs, device-hours, kWh and kg CO2e.

Decision: no codecarbon backend, not even an optional one (as of codecarbon 3.3.2):
  * It has no TPU support, jaxlm's main target: on a TPU VM it would report the host CPU and RAM only.
  * Offline mode (OfflineEmissionsTracker) is keyed by country ISO code, or by cloud region from its
    data/cloud/impact.csv, which in 3.3.2 lists Google Cloud regions only (Google's 2023 figures): no AWS or Azure
    region, and a year older than the table below.
  * It brings 36 packages into the environment (pandas, pydantic, requests, rich, typer, questionary, psutil,
    prometheus_client, authlib, ...; ~290 MB in a fresh venv), runs a sampling thread, writes emissions.csv by
    default, and its tracker's constructor swallows exceptions (@suppress(Exception)), so a misconfiguration
    passes silently.
  * What it measures on the hardware we care about is the same two counters read here in a few dozen lines (NVML
    total energy; RAPL package energy_uj with wrap-around), and it knows nothing of jaxlm's multi-host layout.
  Its bundled data were a cross-check and, where noted, the source of a row (Ember/Our World in Data country
  figures in data/private_infra/global_energy_mix.json).

What a run reports (summary.json, the end-of-run table, and live in the metrics):

    train_flops          analytic FLOPs per step (all devices) x steps run since start()
    device_hours         global devices x wall time since start()
    it_energy_kwh        energy of the devices themselves: accelerator chips/boards, or the CPU packages on a
                         CPU run. Not the hosts' CPUs, memory, disks or network on an accelerator run, so it
                         is a lower bound on the servers' energy.
    facility_energy_kwh  it_energy_kwh x PUE: what the data centre drew from the grid for it (cooling, power
                         conversion). This is the figure behind co2e_kg.
    co2e_kg              facility_energy_kwh x grid carbon intensity (gCO2e/kWh) / 1000. Location-based: the
                         average grid of the region, before any renewable purchases of the provider
                         (market-based Scope 2 figures, e.g. Google's CFE matching, are lower).

How the energy is had (`energy_method`), first that works of:

    "nvml"      NVIDIA GPUs: the driver's cumulative energy counter per board (nvmlDeviceGetTotalEnergyConsumption,
                Volta and newer) through the optional `pynvml` module (package nvidia-ml-py).
    "rapl"      CPU runs on Linux: the powercap RAPL package counters (Intel, and AMD Zen on recent kernels, which
                expose the same intel-rapl files). energy_uj is readable by root only since the PLATYPUS fix
                (CVE-2020-8694; Linux 5.10 and stable backports), so this often falls back to the
                estimate; the reason is reported.
    "estimate"  DEVICE_POWER_W (typical power under training load) x devices x wall time. TPUs always take this
                path: no per-chip energy counter is exposed to a TPU VM.
    "none"      no counter and no power figure for the device kind (pass power_w): energy and CO2e are None.

Multi-host: each host measures only its own devices. The summary is for the whole run, scaled from this host by
num_global_devices / num_local_devices (the process count when hosts are alike): for the estimate that is exactly
power x global devices x time; for a measured reading it is this host's reading x the process count, an
extrapolation flagged by `energy_extrapolated`. Hosts are not summed over the network: accounting must never
add a collective to the training loop.

A resumed run accounts for its own segment (since start()); summing segments is left to whoever reads the
summaries.

The numbers are for comparing runs and regions and for order-of-magnitude budgets, not for carbon reporting:
board TDPs are upper figures, the TPU powers past v4 are estimates, and grid intensity varies by hour.
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import jax

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Device power


# Watts per device under a training load. Matched against jax's device_kind (lower-cased), most specific first,
# like metrics.PEAK_FLOPS. GPUs: the vendor's maximum board power (TDP); a well-fed training step runs near it, so
# it is an upper figure. TPUs: chip power (not the host), measured by Google for v4 and estimated for the rest,
# since Google publishes no per-chip power for v5e, v5p or v6e.
DEVICE_POWER_W: tuple[tuple[str, float], ...] = (
    # ESTIMATE. v5e is the single-TensorCore "efficiency" part, successor of TPU v4i (175 W TDP: Jouppi et al.,
    # "Ten Lessons From Three Generations Shaped Google's TPUv4i", ISCA 2021), with 1.4x v4i's peak FLOP/s.
    ("tpu v5 lite", 200.0), ("tpu v5e", 200.0),
    # ESTIMATE. Google: Trillium has 4.7x v5e's peak compute at ">67% better energy efficiency" (Cloud blog,
    # "Introducing Trillium", May 2024), so its power is (speed-up / 1.67) x v5e's: 1.5x for a 2.5x faster
    # workload, 2.8x at the full 4.7x. Taken as 2x the v5e estimate.
    ("tpu v6 lite", 400.0), ("tpu v6e", 400.0),
    # ESTIMATE. v5p's 459 TFLOP/s at TPU v4's measured efficiency (275 TFLOP/s / 170 W) is ~285 W; rounded to
    # 300 W for its 3x larger HBM (95 GB). No efficiency gain over v4 assumed.
    ("tpu v5p", 300.0), ("tpu v5", 300.0),
    # Google, measured: mean chip power 170 W on production workloads (max 192 W). Jouppi et al., "TPU v4: An
    # Optically Reconfigurable Supercomputer for Machine Learning", ISCA 2023 (arXiv:2304.01433).
    ("tpu v4", 170.0),
    # NVIDIA H200 product page / datasheet: H200 SXM max TDP 700 W; H200 NVL (PCIe) up to 600 W.
    ("h200 nvl", 600.0), ("h200", 700.0),
    # NVIDIA H100 datasheet: SXM5 up to 700 W; PCIe 350 W; NVL 400 W. jax names the SXM part "H100 80GB HBM3".
    ("h100 pcie", 350.0), ("h100 nvl", 400.0), ("h100", 700.0),
    # NVIDIA A100 datasheet: SXM4 400 W; PCIe 40GB 250 W; PCIe 80GB 300 W.
    ("a100-pcie", 250.0), ("a100 80gb pcie", 300.0), ("a100", 400.0),
)

# One CPU socket's TDP when nothing better is known: a mid-range 2020s server part (Intel Xeon Platinum 8380: 270 W,
# Xeon Gold 6338: 205 W, AMD EPYC 7763: 280 W, vendor spec pages). Laptops are 15-65 W: pass cpu_tdp_w.
DEFAULT_CPU_TDP_W = 250.0

_TPU_SHORT_NAME = re.compile(r"(?:tpu[\s_-]*)?v(\d+)(e|p|lite)?")


def _normalize_kind(device_kind: str) -> str:
    """Lower-case; TPU short names as the estimate script writes them ('v5e', 'tpu-v5p', 'v6e') become jax's
    device_kind ('tpu v5 lite', 'tpu v5p', 'tpu v6 lite')."""
    kind = device_kind.strip().lower()
    m = _TPU_SHORT_NAME.fullmatch(kind)
    if m:
        gen, variant = m.groups()
        kind = f"tpu v{gen}" + {None: "", "p": "p", "e": " lite", "lite": " lite"}[variant]
    return kind


def is_cpu_kind(device_kind: str) -> bool:
    return _normalize_kind(device_kind).startswith("cpu")


def is_nvidia_kind(device_kind: str) -> bool:
    kind = _normalize_kind(device_kind)
    return "nvidia" in kind or any(gpu in kind for gpu in ("a100", "h100", "h200"))


def power_w_per_device(device_kind: str, *, cpu_tdp_w: float = DEFAULT_CPU_TDP_W) -> float | None:
    """Typical watts of one device of this kind under training load (DEVICE_POWER_W); for "cpu", one socket's TDP
    (`cpu_tdp_w`). None if the kind is unknown."""
    kind = _normalize_kind(device_kind)
    if kind.startswith("cpu"):
        return float(cpu_tdp_w)
    for key, watts in DEVICE_POWER_W:
        if key in kind:
            return watts
    return None


# ---------------------------------------------------------------------------------------------
# Grid carbon intensity and PUE


# Region -> (provider, grid carbon intensity in gCO2e/kWh): the yearly average, location-based.
#
# gcp: Google's published "Grid carbon intensity (gCO2eq / kWh)" per region for 2024
#   (cloud.google.com/sustainability/region-carbon; machine-readable in github.com/GoogleCloudPlatform/
#   region-carbon-info, data/yearly/2024.csv), which Google derives from Electricity Maps hourly data.
# aws, azure: neither provider publishes a per-region grid figure. A region on the same grid zone as a Google
#   region takes Google's 2024 figure for that zone (named in the comment). Ireland, where Google has no region,
#   takes Ember's 2023 country figure via Our World in Data (carbon_intensity_elec; the value bundled in
#   codecarbon 3.3.2, data/private_infra/global_energy_mix.json).
REGIONS: dict[str, tuple[str, float]] = {
    # Google Cloud (2024)
    "us-central1": ("gcp", 412.72),  # Iowa
    "us-central2": ("gcp", 372.23),  # Oklahoma (TPU v4)
    "us-east1": ("gcp", 575.77),  # South Carolina
    "us-east4": ("gcp", 323.05),  # Northern Virginia
    "us-east5": ("gcp", 323.05),  # Columbus, Ohio
    "us-south1": ("gcp", 302.95),  # Dallas
    "us-west1": ("gcp", 79.23),  # Oregon
    "us-west4": ("gcp", 357.30),  # Las Vegas
    "northamerica-northeast1": ("gcp", 5.48),  # Montréal
    "northamerica-northeast2": ("gcp", 58.56),  # Toronto
    "southamerica-east1": ("gcp", 67.32),  # São Paulo
    "europe-west1": ("gcp", 103.37),  # Belgium
    "europe-west2": ("gcp", 105.94),  # London
    "europe-west3": ("gcp", 275.82),  # Frankfurt
    "europe-west4": ("gcp", 208.81),  # Netherlands (Eemshaven)
    "europe-west9": ("gcp", 16.30),  # Paris
    "europe-north1": ("gcp", 39.32),  # Finland
    "europe-north2": ("gcp", 2.73),  # Stockholm
    "asia-east1": ("gcp", 439.29),  # Taiwan
    "asia-east2": ("gcp", 505.02),  # Hong Kong
    "asia-northeast1": ("gcp", 452.85),  # Tokyo
    "asia-south1": ("gcp", 678.76),  # Mumbai
    "asia-southeast1": ("gcp", 366.85),  # Singapore
    "australia-southeast1": ("gcp", 497.50),  # Sydney
    # AWS
    "us-east-1": ("aws", 323.05),  # N. Virginia: as gcp us-east4
    "us-east-2": ("aws", 323.05),  # Ohio (same PJM zone): as gcp us-east5
    "us-west-2": ("aws", 79.23),  # Oregon: as gcp us-west1
    "ca-central-1": ("aws", 5.48),  # Montréal: as gcp northamerica-northeast1
    "eu-west-1": ("aws", 290.81),  # Ireland: Ember 2023 via OWID
    "eu-west-2": ("aws", 105.94),  # London: as gcp europe-west2
    "eu-central-1": ("aws", 275.82),  # Frankfurt: as gcp europe-west3
    "eu-north-1": ("aws", 2.73),  # Stockholm: as gcp europe-north2
    "ap-northeast-1": ("aws", 452.85),  # Tokyo: as gcp asia-northeast1
    "ap-south-1": ("aws", 678.76),  # Mumbai: as gcp asia-south1
    "ap-southeast-1": ("aws", 366.85),  # Singapore: as gcp asia-southeast1
    "ap-southeast-2": ("aws", 497.50),  # Sydney: as gcp australia-southeast1
    # Azure
    "eastus": ("azure", 323.05),  # Virginia: as gcp us-east4
    "eastus2": ("azure", 323.05),  # Virginia: as gcp us-east4
    "centralus": ("azure", 412.72),  # Iowa: as gcp us-central1
    "southcentralus": ("azure", 302.95),  # Texas (ERCOT): as gcp us-south1
    "canadacentral": ("azure", 58.56),  # Toronto: as gcp northamerica-northeast2
    "westeurope": ("azure", 208.81),  # Netherlands: as gcp europe-west4
    "northeurope": ("azure", 290.81),  # Ireland: Ember 2023 via OWID
    "uksouth": ("azure", 105.94),  # London: as gcp europe-west2
    "germanywestcentral": ("azure", 275.82),  # Frankfurt: as gcp europe-west3
    "francecentral": ("azure", 16.30),  # Paris: as gcp europe-west9
    "swedencentral": ("azure", 2.73),  # Sweden (SE3 zone): as gcp europe-north2
    "eastasia": ("azure", 505.02),  # Hong Kong: as gcp asia-east2
    "japaneast": ("azure", 452.85),  # Tokyo: as gcp asia-northeast1
    "southeastasia": ("azure", 366.85),  # Singapore: as gcp asia-southeast1
    "australiaeast": ("azure", 497.50),  # New South Wales: as gcp australia-southeast1
}

# When no region or number is given: the world average, 475 gCO2e/kWh (IEA, Global Energy & CO2 Status Report
# 2019; the world_average codecarbon uses). Reported with region "world-average".
WORLD_AVERAGE_G_PER_KWH = 475.0
WORLD_AVERAGE = "world-average"

# Fleet-wide PUE per provider: Google 1.10 (2024 Environmental Report, 2023 trailing-twelve-month fleet average);
# AWS 1.15 (AWS sustainability pages, 2023 global PUE); Microsoft 1.18 (Microsoft datacenter efficiency page,
# FY2023 fleet average; approximate).
PROVIDER_PUE: dict[str, float] = {"gcp": 1.10, "aws": 1.15, "azure": 1.18}
# Any other data centre: the industry average annual PUE, 1.56 (Uptime Institute, Global Data Center Survey 2024).
DEFAULT_PUE = 1.56


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def carbon_intensity(region_or_number: str | float) -> float:
    """Grid carbon intensity in gCO2e/kWh of a cloud region in REGIONS (case-insensitive), or the number itself
    (a float, or a string that parses as one: config values arrive as strings from the command line)."""
    number = _as_number(region_or_number)
    if number is not None:
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"carbon intensity must be a finite number >= 0 gCO2e/kWh, got {region_or_number!r}")
        return number
    if isinstance(region_or_number, str):
        entry = REGIONS.get(region_or_number.strip().lower())
        if entry is not None:
            return entry[1]
    raise ValueError(f"unknown region {region_or_number!r}: give gCO2e/kWh as a number, or one of "
                     f"{', '.join(sorted(REGIONS))}")


def provider_of(region_or_number: str | float | None) -> str | None:
    """'gcp', 'aws' or 'azure' for a region in REGIONS; None for a number, None, or an unknown name."""
    if isinstance(region_or_number, str):
        entry = REGIONS.get(region_or_number.strip().lower())
        return entry[0] if entry else None
    return None


def default_pue(region_or_number: str | float | None) -> float:
    """The region's provider's fleet PUE (PROVIDER_PUE), else DEFAULT_PUE."""
    return PROVIDER_PUE.get(provider_of(region_or_number), DEFAULT_PUE)


@dataclass(frozen=True)
class Grid:
    """Where the energy comes from: region name (or None for a bare number, WORLD_AVERAGE when unset),
    gCO2e/kWh and the PUE applied."""
    region: str | None
    g_per_kwh: float
    pue: float


def resolve_grid(region: str | float | None = None, g_per_kwh: str | float | None = None,
                 pue: float | None = None) -> Grid:
    """`region`: a REGIONS name or a number (gCO2e/kWh). `g_per_kwh`: replaces the region's figure (a named region
    still picks the PUE). `pue`: replaces the provider's. Nothing given: the world average and DEFAULT_PUE."""
    if region is None and g_per_kwh is None:
        name, g = WORLD_AVERAGE, WORLD_AVERAGE_G_PER_KWH
    else:
        if region is not None:
            g = carbon_intensity(region)  # an unknown name is an error even when g_per_kwh replaces its figure
        if g_per_kwh is not None:
            g = carbon_intensity(g_per_kwh)
        named = isinstance(region, str) and _as_number(region) is None
        name = region.strip().lower() if named else None
    pue = default_pue(region) if pue is None else float(pue)
    if not math.isfinite(pue) or pue < 1.0:
        raise ValueError(f"PUE must be >= 1 (facility energy / IT energy), got {pue!r}")
    return Grid(name, g, pue)


# ---------------------------------------------------------------------------------------------
# Energy readers


class ReaderUnavailable(Exception):
    """A reader cannot measure on this machine; str(exception) says why."""


class EnergyReader(Protocol):
    """A cumulative energy counter for this host's devices."""
    method: str  # "nvml" | "rapl"

    def read_j(self) -> float:
        """Joules used by the devices since the reader was opened. Monotonic: counter wrap-around is handled, and a
        failed read returns the last total (the next good read catches up on the interval)."""
        ...


RAPL_ROOT = "/sys/class/powercap"
_RAPL_PACKAGE = re.compile(r"intel-rapl:\d+")  # intel-rapl:0, not the subdomains intel-rapl:0:0 or intel-rapl-mmio:0


def _read_int(path: str) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read().strip())


class RaplReader:
    """RAPL package domains under `root` (Linux powercap): the sum of their energy_uj counters.

    Only top-level package domains count: their subdomains are parts of the package (core, uncore) or not the CPU
    (dram), and a "psys" domain (whole platform, on client CPUs) would count the packages twice. Each counter wraps
    to 0 past max_energy_range_uj (about 262 kJ on Intel, ~17 min of a 250 W package): a read that goes backwards
    adds the range. Reads must come more often than one wrap period, or whole wraps are missed (log steps do).
    Caveat: some multi-die AMD parts expose one package domain per die mirroring one socket counter, which
    multiplies the energy; compare with the estimate if in doubt.
    """
    method = "rapl"

    def __init__(self, root: str = RAPL_ROOT):
        self.root = root
        try:
            entries = sorted(os.listdir(root))
        except OSError as e:
            raise ReaderUnavailable(f"no RAPL powercap tree at {root}: {e.strerror or e}") from None
        self.domains: list[str] = []
        for name in entries:
            path = os.path.join(root, name)
            if _RAPL_PACKAGE.fullmatch(name) and self._is_package(path):
                self.domains.append(path)
        if not self.domains:
            raise ReaderUnavailable(f"no RAPL package domain (intel-rapl:N named package-*) under {root}")
        self._range_uj: list[int] = []
        self._last_uj: list[int] = []
        for path in self.domains:
            try:
                self._range_uj.append(_read_int(os.path.join(path, "max_energy_range_uj")))
                self._last_uj.append(_read_int(os.path.join(path, "energy_uj")))
            except PermissionError as e:
                raise ReaderUnavailable(f"permission denied reading {e.filename or path} (energy_uj is root-only "
                                        f"since CVE-2020-8694: run as root or grant read access)") from None
            except (OSError, ValueError) as e:
                raise ReaderUnavailable(f"cannot read {path}: {e}") from None
        self._total_uj = 0
        self._warned = False

    @staticmethod
    def _is_package(path: str) -> bool:
        try:
            with open(os.path.join(path, "name"), encoding="ascii") as f:
                return f.read().strip().startswith("package")
        except FileNotFoundError:
            return True  # older kernels: every top-level intel-rapl:N is a package
        except OSError:
            return False

    def read_j(self) -> float:
        for i, path in enumerate(self.domains):
            try:
                now = _read_int(os.path.join(path, "energy_uj"))
            except (OSError, ValueError) as e:
                if not self._warned:
                    log.warning("could not read %s/energy_uj (retrying at the next read): %s", path, e)
                    self._warned = True
                continue
            delta = now - self._last_uj[i]
            if delta < 0:  # wrapped past max_energy_range_uj
                delta += self._range_uj[i]
            self._total_uj += delta
            self._last_uj[i] = now
        return self._total_uj / 1e6


def _import_pynvml():
    try:
        import pynvml  # optional: package nvidia-ml-py
    except ImportError:
        return None
    return pynvml


class NvmlReader:
    """The NVIDIA driver's cumulative energy counters (millijoules since the driver loaded; Volta and newer) of this
    process's GPUs, through a pynvml module object (injected in tests).

    NVML numbers GPUs in PCI order regardless of CUDA_VISIBLE_DEVICES, so the GPUs are picked from
    `visible_devices` (default: $CUDA_VISIBLE_DEVICES; indices or GPU-... UUIDs), else indices 0..num_devices-1.
    """
    method = "nvml"

    def __init__(self, nvml: Any, num_devices: int, visible_devices: str | None = None):
        self.nvml = nvml
        try:
            nvml.nvmlInit()
        except Exception as e:
            raise ReaderUnavailable(f"nvmlInit failed: {e}") from None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible_devices is None else visible_devices
        ids: Sequence[str] = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
        try:
            if ids:
                if len(ids) < num_devices:
                    raise ReaderUnavailable(f"{len(ids)} visible GPU(s) ({visible}) for {num_devices} local devices")
                self.handles = [nvml.nvmlDeviceGetHandleByIndex(int(i)) if i.isdigit()
                                else nvml.nvmlDeviceGetHandleByUUID(i) for i in ids[:num_devices]]
            else:
                count = nvml.nvmlDeviceGetCount()
                if count < num_devices:
                    raise ReaderUnavailable(f"NVML sees {count} GPU(s) for {num_devices} local devices")
                self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(num_devices)]
            self._last_mj = [int(nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles]
        except ReaderUnavailable:
            raise
        except Exception as e:  # NVMLError_NotSupported before Volta, MIG instances, a bad UUID...
            raise ReaderUnavailable(f"NVML total energy not available: {e}") from None
        self._total_mj = 0
        self._warned = False

    def read_j(self) -> float:
        for i, handle in enumerate(self.handles):
            try:
                now = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            except Exception as e:
                if not self._warned:
                    log.warning("NVML energy read failed (retrying at the next read): %s", e)
                    self._warned = True
                continue
            self._total_mj += max(now - self._last_mj[i], 0)  # a 64-bit counter; < only if the driver reloaded
            self._last_mj[i] = now
        return self._total_mj / 1e3


# ---------------------------------------------------------------------------------------------
# The meter: a reader, or the estimate


@dataclass
class EnergyMeter:
    """This host's device energy. `method` is "nvml", "rapl", "estimate" or "none"; `skipped` says, per method
    tried before it, why it was not used. `power_w_per_device` is the table figure (or override) the estimate
    uses, kept for reference when a reader measures."""
    method: str
    num_local_devices: int
    power_w_per_device: float | None
    reader: EnergyReader | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    _base_j: float = field(default=0.0, init=False, repr=False)

    def start(self) -> None:
        self._base_j = self.reader.read_j() if self.reader is not None else 0.0

    def local_energy_j(self, elapsed_s: float) -> float | None:
        """Joules of this host's devices since start(): the reader's, or power x local devices x elapsed_s."""
        if self.reader is not None:
            return self.reader.read_j() - self._base_j
        if self.power_w_per_device is None:
            return None
        return self.power_w_per_device * self.num_local_devices * elapsed_s


def make_energy_meter(device_kind: str, num_local_devices: int, *, prefer: Sequence[str] = ("nvml", "rapl"),
                      rapl_root: str = RAPL_ROOT, nvml: Any = None, visible_devices: str | None = None,
                      power_w: float | None = None, cpu_tdp_w: float = DEFAULT_CPU_TDP_W,
                      cpu_sockets: int = 1) -> EnergyMeter:
    """The first reader in `prefer` that works for this device kind ("nvml" only for NVIDIA kinds, "rapl" only for
    "cpu"), else the estimate. `nvml`: a pynvml module object (default: import pynvml if installed). `power_w`:
    watts per device for the estimate instead of DEVICE_POWER_W. On CPU the estimate is the host's sockets x
    `cpu_tdp_w`, shared by its jax CPU devices (simulated devices split one host, they add no power)."""
    if num_local_devices < 1:
        raise ValueError(f"num_local_devices must be >= 1, got {num_local_devices}")
    if power_w is not None:
        per_device = float(power_w)
    elif is_cpu_kind(device_kind):
        per_device = cpu_tdp_w * cpu_sockets / num_local_devices
    else:
        per_device = power_w_per_device(device_kind)
    skipped: dict[str, str] = {}
    for method in prefer:
        if method == "estimate":
            break
        if method == "nvml":
            if not is_nvidia_kind(device_kind):
                skipped[method] = f"not an NVIDIA device ({device_kind})"
                continue
            module = nvml if nvml is not None else _import_pynvml()
            if module is None:
                skipped[method] = "pynvml is not installed (pip install nvidia-ml-py)"
                continue
            try:
                reader: EnergyReader = NvmlReader(module, num_local_devices, visible_devices)
            except ReaderUnavailable as e:
                skipped[method] = str(e)
                continue
        elif method == "rapl":
            if not is_cpu_kind(device_kind):
                skipped[method] = f"RAPL measures CPU packages; the devices are {device_kind}"
                continue
            try:
                reader = RaplReader(rapl_root)
            except ReaderUnavailable as e:
                skipped[method] = str(e)
                continue
        else:
            raise ValueError(f"unknown energy method {method!r}: use 'nvml', 'rapl' or 'estimate'")
        return EnergyMeter(method, num_local_devices, per_device, reader, skipped)
    if per_device is None:
        skipped["estimate"] = f"no power figure for device kind {device_kind!r} (pass power_w)"
        return EnergyMeter("none", num_local_devices, None, None, skipped)
    return EnergyMeter("estimate", num_local_devices, per_device, None, skipped)


# ---------------------------------------------------------------------------------------------
# The run's accounting


def _kwh(joules: float | None) -> float | None:
    return None if joules is None else joules / 3.6e6


class Accounting:
    """FLOPs, device-hours, energy and CO2e of a training run, from start() on.

    device_kind, num_local_devices / num_global_devices: this process's jax devices and the run's.
    carbon_intensity: a region name (REGIONS) or gCO2e/kWh; None: the world average. pue: None: the region's
    provider's (default_pue). flops_per_step: analytic training FLOPs of one step over all devices (None: not
    reported). meter: default make_energy_meter(device_kind, num_local_devices). clock: seconds, monotonic
    (injected in tests).
    """

    def __init__(self, device_kind: str, num_local_devices: int, num_global_devices: int | None = None, *,
                 carbon_intensity: str | float | None = None, pue: float | None = None,
                 flops_per_step: float | None = None, meter: EnergyMeter | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.device_kind = device_kind
        self.num_local_devices = num_local_devices
        self.num_global_devices = num_local_devices if num_global_devices is None else num_global_devices
        if self.num_global_devices < num_local_devices:
            raise ValueError(f"num_global_devices ({self.num_global_devices}) < num_local_devices "
                             f"({num_local_devices})")
        self.grid = resolve_grid(carbon_intensity, pue=pue)
        self.flops_per_step = flops_per_step
        self.meter = meter if meter is not None else make_energy_meter(device_kind, num_local_devices)
        self.clock = clock
        self._t0: float | None = None
        self.step: int | None = None
        self.steps_done = 0

    @property
    def hosts_factor(self) -> float:
        """Global over local devices: the process count when hosts are alike."""
        return self.num_global_devices / self.num_local_devices

    def start(self) -> None:
        """Start the clock and the energy counter (at the first training step, after compilation if wished)."""
        self._t0 = self.clock()
        self.meter.start()

    def update(self, step: int, steps_done: int) -> dict[str, float]:
        """Totals so far, as metrics to log: `step` is the global step (recorded), `steps_done` the steps run
        since start(). Cheap: one counter read (a few small files, or one NVML call per GPU)."""
        self.step, self.steps_done = int(step), int(steps_done)
        totals = self._totals()
        keys = ("train_flops", "device_hours", "it_energy_kwh", "facility_energy_kwh", "co2e_kg")
        return {k: totals[k] for k in keys if totals[k] is not None}

    def summary(self, steps_done: int | None = None) -> dict[str, Any]:
        """The fields for summary.json (see the module docstring), read now."""
        if steps_done is not None:
            self.steps_done = int(steps_done)
        return self._totals()

    def _totals(self) -> dict[str, Any]:
        if self._t0 is None:
            raise RuntimeError("Accounting.start() was not called")
        elapsed = max(self.clock() - self._t0, 0.0)
        local_j = self.meter.local_energy_j(elapsed)
        it_j = None if local_j is None else local_j * self.hosts_factor
        it_kwh = _kwh(it_j)
        facility_kwh = None if it_kwh is None else it_kwh * self.grid.pue
        measured = self.meter.method in ("nvml", "rapl")
        if measured and local_j is not None and elapsed > 0:
            power = local_j / elapsed / self.num_local_devices  # measured mean
        else:
            power = self.meter.power_w_per_device
        return {
            "train_flops": None if self.flops_per_step is None else self.flops_per_step * self.steps_done,
            "device_hours": self.num_global_devices * elapsed / 3600.0,
            "it_energy_kwh": it_kwh,
            "facility_energy_kwh": facility_kwh,
            "co2e_kg": None if facility_kwh is None else facility_kwh * self.grid.g_per_kwh / 1000.0,
            "energy_method": self.meter.method,
            "energy_extrapolated": measured and self.hosts_factor != 1,
            "energy_methods_skipped": dict(self.meter.skipped),
            "power_w_per_device": power,
            "pue": self.grid.pue,
            "carbon_intensity_g_per_kwh": self.grid.g_per_kwh,
            "region": self.grid.region,
        }


def estimate_run(device_kind_or_name: str, num_devices: int, hours: float, *, region: str | float | None = None,
                 carbon_intensity: str | float | None = None, pue: float | None = None,
                 power_w: float | None = None, cpu_tdp_w: float = DEFAULT_CPU_TDP_W) -> dict[str, Any]:
    """Energy and CO2e of a run before it starts, from the same tables as Accounting's estimate.

    device_kind_or_name: a jax device_kind ("TPU v5 lite", "NVIDIA H100 80GB HBM3") or a short name ("v5e", "v5p",
    "h100", "cpu"). num_devices: chips or GPUs; for "cpu", sockets. region: a REGIONS name or gCO2e/kWh;
    carbon_intensity replaces the region's figure; pue the provider's. An unknown device kind is a ValueError
    (pass power_w)."""
    if num_devices < 1 or not (hours >= 0 and math.isfinite(hours)):
        raise ValueError(f"need num_devices >= 1 and hours >= 0, got {num_devices}, {hours}")
    power = float(power_w) if power_w is not None else power_w_per_device(device_kind_or_name, cpu_tdp_w=cpu_tdp_w)
    if power is None:
        known = ", ".join(key for key, _ in DEVICE_POWER_W)
        raise ValueError(f"no power figure for device {device_kind_or_name!r} (known: {known}, cpu): pass power_w")
    grid = resolve_grid(region, carbon_intensity, pue)
    it_kwh = power * num_devices * hours / 1000.0
    facility_kwh = it_kwh * grid.pue
    return {
        "device_kind": device_kind_or_name,
        "num_devices": num_devices,
        "hours": hours,
        "device_hours": num_devices * hours,
        "power_w_per_device": power,
        "it_energy_kwh": it_kwh,
        "facility_energy_kwh": facility_kwh,
        "co2e_kg": facility_kwh * grid.g_per_kwh / 1000.0,
        "energy_method": "estimate",
        "pue": grid.pue,
        "carbon_intensity_g_per_kwh": grid.g_per_kwh,
        "region": grid.region,
    }



def accounting_for_run(train_config, flops_per_step: float | None, num_global_devices: int) -> Accounting | None:
    """The Accounting of a pretraining / fine-tuning run from its config.train: accounting (on / off),
    carbon_region (a REGIONS name or gCO2e/kWh; '' = the world average) and pue (0 = the provider's)."""
    if not train_config.get("accounting", True):
        return None
    devices = jax.local_devices()
    return Accounting(devices[0].device_kind, len(devices), num_global_devices,
                      carbon_intensity=train_config.get("carbon_region") or None, pue=train_config.get("pue") or None,
                      flops_per_step=flops_per_step)
