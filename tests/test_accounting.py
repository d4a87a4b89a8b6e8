"""jaxlm.train.accounting: the tables, the RAPL and NVML readers on fakes, the estimate, and Accounting on a fake
clock, against numbers worked out by hand."""
import json
import os
import sys

import pytest

from jaxlm.train import accounting as acc
from jaxlm.train.metrics import format_summary


class FakeClock:
    """Accounting's clock, moved by hand."""

    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture(autouse=True)
def _no_cuda_visible_devices(monkeypatch):
    """The NVML reader reads $CUDA_VISIBLE_DEVICES: keep the machine's out of the tests."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


# ---------------------------------------------------------------------------------------------
# Tables


@pytest.mark.parametrize("kind, watts", [
    ("TPU v4", 170.0),
    ("TPU v5 lite", 200.0), ("v5e", 200.0),
    ("TPU v5p", 300.0), ("TPU v5", 300.0), ("v5p", 300.0),
    ("TPU v6 lite", 400.0), ("v6e", 400.0),
    ("NVIDIA A100-SXM4-80GB", 400.0), ("NVIDIA A100-PCIE-40GB", 250.0), ("NVIDIA A100 80GB PCIe", 300.0),
    ("NVIDIA H100 80GB HBM3", 700.0), ("NVIDIA H100 PCIe", 350.0), ("NVIDIA H100 NVL", 400.0), ("h100", 700.0),
    ("NVIDIA H200", 700.0), ("NVIDIA H200 NVL", 600.0),
    ("cpu", acc.DEFAULT_CPU_TDP_W),
])
def test_device_kind_matching(kind, watts):
    assert acc.power_w_per_device(kind) == watts


def test_device_kind_classes_and_unknown_kinds():
    assert acc.is_nvidia_kind("NVIDIA H200") and acc.is_nvidia_kind("NVIDIA H100 80GB HBM3")
    assert not acc.is_nvidia_kind("TPU v5 lite") and not acc.is_nvidia_kind("cpu")
    assert acc.is_cpu_kind("cpu") and not acc.is_cpu_kind("TPU v4")
    assert acc.power_w_per_device("cpu", cpu_tdp_w=65) == 65.0
    assert acc.power_w_per_device("Tesla V100-SXM2-16GB") is None
    assert acc.power_w_per_device("TPU v3") is None


def test_carbon_intensity_regions_and_numbers():
    assert acc.carbon_intensity("us-central1") == 412.72
    assert acc.carbon_intensity(" US-EAST-1 ") == 323.05  # AWS N. Virginia: Google's figure for the PJM zone
    assert acc.carbon_intensity("westeurope") == 208.81
    assert acc.carbon_intensity(350) == 350.0
    assert acc.carbon_intensity("420.5") == 420.5  # from a command-line override
    assert acc.carbon_intensity(0) == 0.0
    with pytest.raises(ValueError, match="gCO2e/kWh"):
        acc.carbon_intensity(-1)
    with pytest.raises(ValueError) as e:
        acc.carbon_intensity("mars-north1")
    message = str(e.value)
    assert "mars-north1" in message
    for region in ("us-central1", "europe-west4", "us-east-1", "eu-west-1", "eastus", "westeurope"):
        assert region in message


def test_pue_defaults_and_grid_resolution():
    assert acc.default_pue("us-east4") == 1.10
    assert acc.default_pue("us-west-2") == 1.15
    assert acc.default_pue("northeurope") == 1.18
    assert acc.default_pue(300) == acc.default_pue(None) == acc.DEFAULT_PUE == 1.56
    assert acc.resolve_grid() == acc.Grid("world-average", 475.0, 1.56)
    assert acc.resolve_grid(200) == acc.Grid(None, 200.0, 1.56)
    # An override replaces the figure; the named region still picks its provider's PUE.
    assert acc.resolve_grid("europe-west4", 100) == acc.Grid("europe-west4", 100.0, 1.10)
    assert acc.resolve_grid("us-east-1", pue=1.3) == acc.Grid("us-east-1", 323.05, 1.3)
    with pytest.raises(ValueError, match="unknown region"):
        acc.resolve_grid("nowhere", 100)
    with pytest.raises(ValueError, match="PUE"):
        acc.resolve_grid("us-central1", pue=0.9)


# ---------------------------------------------------------------------------------------------
# The estimate before a run


def test_estimate_run_energy_pue_and_carbon():
    e = acc.estimate_run("v5e", 256, 10, region="us-central1")
    assert e["power_w_per_device"] == 200.0
    assert e["device_hours"] == 2560
    assert e["it_energy_kwh"] == pytest.approx(200 * 256 * 10 / 1000)  # 512 kWh
    assert e["facility_energy_kwh"] == pytest.approx(512 * 1.10)  # 563.2 kWh
    assert e["co2e_kg"] == pytest.approx(563.2 * 412.72 / 1000)  # 232.44 kg
    assert (e["pue"], e["carbon_intensity_g_per_kwh"], e["region"]) == (1.10, 412.72, "us-central1")

    e = acc.estimate_run("NVIDIA H100 80GB HBM3", 8, 2.5, carbon_intensity=350, pue=1.2)
    assert e["it_energy_kwh"] == pytest.approx(14.0)  # 700 W x 8 x 2.5 h
    assert e["facility_energy_kwh"] == pytest.approx(16.8)
    assert e["co2e_kg"] == pytest.approx(5.88)
    assert e["region"] is None

    e = acc.estimate_run("cpu", 2, 1.0, cpu_tdp_w=100)  # two sockets for an hour, no region
    assert e["it_energy_kwh"] == pytest.approx(0.2)
    assert e["co2e_kg"] == pytest.approx(0.2 * 1.56 * 475 / 1000)
    assert e["region"] == "world-average"

    assert acc.estimate_run("TPU v3", 8, 1, power_w=220)["it_energy_kwh"] == pytest.approx(1.76)
    with pytest.raises(ValueError, match="power_w"):
        acc.estimate_run("TPU v3", 8, 1)


# ---------------------------------------------------------------------------------------------
# RAPL on a fake powercap tree


def _domain(root, name, label, energy_uj, max_uj=1_000_000_000):
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def _set(domain, energy_uj):
    (domain / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def rapl_tree(tmp_path):
    """Two packages (package 0 about to wrap at 1000 J), a subdomain in both the flat and the nested layout of
    sysfs, a psys domain and an MMIO mirror of package 0: only the two packages count."""
    root = tmp_path / "powercap"
    pkg0 = _domain(root, "intel-rapl:0", "package-0", 900_000_000)
    pkg1 = _domain(root, "intel-rapl:1", "package-1", 10_000_000)
    others = [_domain(root, "intel-rapl:0:0", "core", 5_000_000),
              _domain(pkg0, "intel-rapl:0:0", "core", 5_000_000),
              _domain(root, "intel-rapl:2", "psys", 7_000_000),
              _domain(root, "intel-rapl-mmio:0", "package-0", 900_000_000)]
    return root, pkg0, pkg1, others


def test_rapl_sums_packages_only_and_handles_wrap_around(rapl_tree):
    root, pkg0, pkg1, others = rapl_tree
    reader = acc.RaplReader(str(root))
    assert [os.path.basename(d) for d in reader.domains] == ["intel-rapl:0", "intel-rapl:1"]
    _set(pkg0, 50_000_000)  # wrapped: 1000 J - 900 J + 50 J = 150 J
    _set(pkg1, 40_000_000)  # 30 J
    for d in others:
        _set(d, 999_000_000)  # must not count
    assert reader.read_j() == pytest.approx(180.0)
    _set(pkg0, 60_000_000)  # +10 J
    assert reader.read_j() == pytest.approx(190.0)
    assert reader.read_j() == pytest.approx(190.0)  # no change, no double counting


def test_rapl_meter_feeds_accounting(rapl_tree):
    root, pkg0, pkg1, _ = rapl_tree
    clock = FakeClock()
    meter = acc.make_energy_meter("cpu", 1, rapl_root=str(root))
    assert meter.method == "rapl" and "nvml" in meter.skipped
    a = acc.Accounting("cpu", 1, carbon_intensity="europe-west4", meter=meter, clock=clock)
    a.start()
    _set(pkg0, 50_000_000)
    _set(pkg1, 40_000_000)
    clock.t += 90.0
    s = a.summary(steps_done=10)
    assert s["energy_method"] == "rapl" and s["energy_extrapolated"] is False
    assert s["it_energy_kwh"] == pytest.approx(180 / 3.6e6)
    assert s["facility_energy_kwh"] == pytest.approx(180 / 3.6e6 * 1.10)
    assert s["co2e_kg"] == pytest.approx(180 / 3.6e6 * 1.10 * 208.81 / 1000)
    assert s["power_w_per_device"] == pytest.approx(2.0)  # measured: 180 J over 90 s on one device


def test_unreadable_rapl_falls_back_to_the_estimate_with_the_reason(rapl_tree, monkeypatch):
    root, pkg0, _, _ = rapl_tree
    (pkg0 / "energy_uj").chmod(0o000)
    real_read_int = acc._read_int

    def read_int_honouring_mode(path):  # tests run as root, whom chmod does not stop: refuse as the kernel would
        if not os.stat(path).st_mode & 0o444:
            raise PermissionError(13, "Permission denied", path)
        return real_read_int(path)

    monkeypatch.setattr(acc, "_read_int", read_int_honouring_mode)
    with pytest.raises(acc.ReaderUnavailable, match="permission denied"):
        acc.RaplReader(str(root))
    meter = acc.make_energy_meter("cpu", 1, rapl_root=str(root), cpu_tdp_w=120)
    assert meter.method == "estimate" and meter.reader is None
    assert "permission denied" in meter.skipped["rapl"] and "intel-rapl:0" in meter.skipped["rapl"]
    assert meter.power_w_per_device == 120.0


def test_missing_rapl_tree_falls_back_to_the_estimate(tmp_path):
    meter = acc.make_energy_meter("cpu", 1, rapl_root=str(tmp_path / "absent"))
    assert meter.method == "estimate"
    assert "no RAPL powercap tree" in meter.skipped["rapl"]
    (tmp_path / "empty").mkdir()
    meter = acc.make_energy_meter("cpu", 1, rapl_root=str(tmp_path / "empty"))
    assert "no RAPL package domain" in meter.skipped["rapl"]


# ---------------------------------------------------------------------------------------------
# NVML with a fake pynvml


class FakeNvml:
    """The slice of pynvml the reader uses: cumulative energy counters in millijoules per GPU."""

    def __init__(self, counters_mj, uuids=None, energy_error=None):
        self.counters = dict(enumerate(counters_mj))
        self.uuids = uuids or {}
        self.energy_error = energy_error
        self.initialised = False

    def nvmlInit(self):
        self.initialised = True

    def nvmlDeviceGetCount(self):
        return len(self.counters)

    def nvmlDeviceGetHandleByIndex(self, i):
        if i not in self.counters:
            raise RuntimeError(f"invalid index {i}")
        return ("gpu", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return ("gpu", self.uuids[uuid])

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.energy_error:
            raise self.energy_error
        return self.counters[handle[1]]


def test_nvml_measures_the_local_gpus_and_extrapolates_to_all_hosts():
    nvml = FakeNvml([1_000_000, 2_000_000])
    clock = FakeClock()
    meter = acc.make_energy_meter("NVIDIA H100 80GB HBM3", 2, nvml=nvml)
    assert nvml.initialised and meter.method == "nvml" and meter.skipped == {}
    a = acc.Accounting("NVIDIA H100 80GB HBM3", 2, 4, carbon_intensity="us-east-1", meter=meter, clock=clock)
    a.start()
    nvml.counters[0] += 360_000  # 360 J
    nvml.counters[1] += 720_000  # 720 J
    clock.t += 3.0
    m = a.update(step=5, steps_done=5)
    local_j = 1080.0
    assert m["it_energy_kwh"] == pytest.approx(2 * local_j / 3.6e6)  # this host x 2 hosts
    assert m["facility_energy_kwh"] == pytest.approx(2 * local_j / 3.6e6 * 1.15)
    assert m["device_hours"] == pytest.approx(4 * 3.0 / 3600)
    s = a.summary()
    assert s["energy_method"] == "nvml" and s["energy_extrapolated"] is True
    assert s["power_w_per_device"] == pytest.approx(local_j / 3.0 / 2)  # 180 W measured mean
    assert s["co2e_kg"] == pytest.approx(m["facility_energy_kwh"] * 323.05 / 1000)


def test_nvml_follows_cuda_visible_devices():
    nvml = FakeNvml([0, 0, 0, 0], uuids={"GPU-abc": 3})
    reader = acc.NvmlReader(nvml, 2, visible_devices="GPU-abc,1")
    assert reader.handles == [("gpu", 3), ("gpu", 1)]
    nvml.counters[3] += 1_000
    nvml.counters[0] += 99_000  # not ours
    assert reader.read_j() == pytest.approx(1.0)
    with pytest.raises(acc.ReaderUnavailable, match="1 visible GPU"):
        acc.NvmlReader(nvml, 2, visible_devices="2")


def test_nvml_unavailable_falls_back_to_the_estimate(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    meter = acc.make_energy_meter("NVIDIA H200", 8)
    assert meter.method == "estimate" and meter.power_w_per_device == 700.0
    assert "pynvml is not installed" in meter.skipped["nvml"]
    assert "RAPL measures CPU packages" in meter.skipped["rapl"]

    unsupported = FakeNvml([0, 0], energy_error=RuntimeError("NVMLError_NotSupported"))
    meter = acc.make_energy_meter("NVIDIA A100-SXM4-40GB", 2, nvml=unsupported)
    assert meter.method == "estimate" and "NotSupported" in meter.skipped["nvml"]

    meter = acc.make_energy_meter("NVIDIA H100 80GB HBM3", 4, nvml=FakeNvml([0, 0]))  # sees 2 GPUs, needs 4
    assert meter.method == "estimate" and "NVML sees 2 GPU(s) for 4" in meter.skipped["nvml"]


def test_nvml_is_not_used_for_other_platforms():
    nvml = FakeNvml([0])
    for kind in ("TPU v5 lite", "cpu"):
        meter = acc.make_energy_meter(kind, 1, nvml=nvml, rapl_root="/nonexistent")
        assert meter.method == "estimate" and "not an NVIDIA device" in meter.skipped["nvml"]
    assert not nvml.initialised
    with pytest.raises(ValueError, match="unknown energy method"):
        acc.make_energy_meter("cpu", 1, prefer=("codecarbon",))


# ---------------------------------------------------------------------------------------------
# Accounting on a fake clock


def test_accounting_estimate_update_and_summary_agree():
    clock = FakeClock()
    a = acc.Accounting("TPU v4", 4, 16, carbon_intensity="us-central2", flops_per_step=1e15, clock=clock)
    with pytest.raises(RuntimeError, match="start"):
        a.update(0, 0)
    a.start()
    clock.t += 1800.0  # half an hour
    m = a.update(step=100, steps_done=100)
    it_kwh = 170 * 16 * 1800 / 3.6e6  # 1.36 kWh: the estimate is power x global devices x time
    assert m == pytest.approx({"train_flops": 1e17, "device_hours": 8.0, "it_energy_kwh": it_kwh,
                               "facility_energy_kwh": it_kwh * 1.10, "co2e_kg": it_kwh * 1.10 * 372.23 / 1000})
    assert it_kwh == pytest.approx(1.36)

    clock.t += 1800.0
    s = a.summary(steps_done=200)
    assert s["train_flops"] == 2e17 and s["device_hours"] == pytest.approx(16.0)
    assert s["it_energy_kwh"] == pytest.approx(2 * it_kwh)
    assert s["facility_energy_kwh"] == pytest.approx(s["it_energy_kwh"] * s["pue"])
    assert s["co2e_kg"] == pytest.approx(s["facility_energy_kwh"] * s["carbon_intensity_g_per_kwh"] / 1000)
    assert s["it_energy_kwh"] == pytest.approx(
        s["power_w_per_device"] * s["device_hours"] / 1000)  # W x device-hours = Wh
    assert {k: s[k] for k in ("energy_method", "energy_extrapolated", "power_w_per_device", "pue",
                              "carbon_intensity_g_per_kwh", "region")} == {
        "energy_method": "estimate", "energy_extrapolated": False, "power_w_per_device": 170.0, "pue": 1.10,
        "carbon_intensity_g_per_kwh": 372.23, "region": "us-central2"}
    assert set(s["energy_methods_skipped"]) == {"nvml", "rapl"}
    json.dumps(s)  # summary.json-ready
    table = format_summary(s)
    assert "energy_methods_skipped/nvml" in table and "co2e_kg" in table


def test_accounting_cpu_estimate_shares_the_sockets_between_simulated_devices():
    clock = FakeClock()
    meter = acc.make_energy_meter("cpu", 8, prefer=("estimate",), cpu_tdp_w=100, cpu_sockets=2)
    assert meter.power_w_per_device == 25.0 and meter.skipped == {}
    a = acc.Accounting("cpu", 8, 16, carbon_intensity=300, pue=1.2, meter=meter, clock=clock)  # 2 hosts
    a.start()
    clock.t += 3600.0
    s = a.summary(steps_done=1)
    assert s["it_energy_kwh"] == pytest.approx(0.4)  # 2 hosts x 2 sockets x 100 W x 1 h
    assert s["co2e_kg"] == pytest.approx(0.4 * 1.2 * 300 / 1000)
    assert s["device_hours"] == pytest.approx(16.0) and s["region"] is None
    assert s["train_flops"] is None


def test_accounting_unknown_device_reports_compute_without_energy():
    clock = FakeClock()
    a = acc.Accounting("TPU v3", 8, flops_per_step=2e12, clock=clock)
    a.start()
    clock.t += 60.0
    assert a.update(10, 10) == pytest.approx({"train_flops": 2e13, "device_hours": 8 * 60 / 3600})
    s = a.summary()
    assert s["energy_method"] == "none" and "pass power_w" in s["energy_methods_skipped"]["estimate"]
    assert s["it_energy_kwh"] is None and s["co2e_kg"] is None and s["power_w_per_device"] is None
    assert s["region"] == "world-average" and s["carbon_intensity_g_per_kwh"] == 475.0
