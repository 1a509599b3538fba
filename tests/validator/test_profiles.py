"""`validate` prices with the profile measured on this machine: machine keys, the choice among
profiles/PAIR-cpu*.json, calibration when none matches, the note for a --profile of another
machine. Machines are faked (calibrate.host_info) and calibration is never run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import validator.calibrate as cal
import validator.validate as val
from simulator.errors import EntrospecError
from simulator.latency import PROFILE_SCHEMA
from validator.validate import (
    ValidateError,
    machine_key,
    machine_slug,
    resolve_profile,
    same_machine,
    write_report,
)

EPYC = {"device": "cpu", "cpu": "AMD EPYC", "logical_cpus": 2, "torch_threads": 2,
        "os": "Linux"}
XEON = {"device": "cpu", "cpu": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
        "logical_cpus": 4, "torch_threads": 2, "os": "Linux"}
H100 = {"device": "cuda:0", "cpu": "AMD EPYC", "logical_cpus": 16, "torch_threads": 16,
        "gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 1, "gpu_memory_GiB": 79.1}


def write(folder: Path, name: str, hardware: dict[str, Any] | None, pair: str = "p") -> Path:
    doc: dict[str, Any] = {"schema": PROFILE_SCHEMA, "pair": pair,
                           "models": {"verifier": {"coef": [0.01, 0.001, 0.0, 0.0]}}}
    if hardware is not None:
        doc["hardware"] = hardware
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def machine(monkeypatch, tmp_path: Path) -> dict[str, Any]:
    """A fake machine (set its "hw"), profiles/ in tmp_path, calibrations recorded in "calls"."""
    state: dict[str, Any] = {"hw": EPYC, "calls": [], "log": []}
    monkeypatch.setattr(val, "PROFILES", tmp_path)
    monkeypatch.setattr(cal, "host_info", lambda device: {"hardware": dict(state["hw"]),
                                                          "libraries": {}})
    monkeypatch.setattr(cal, "calibrate", lambda pair, **kw: state["calls"].append((pair, kw)))
    return state


def test_machine_key_is_what_prices_a_machine() -> None:
    assert machine_key(EPYC) == {"device": "cpu", "cpu": "AMD EPYC", "logical_cpus": 2,
                                 "torch_threads": 2}
    assert machine_key(H100) == {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3",
                                 "gpu_count": 1}
    assert machine_key({"device": "cpu", "cpu": " AMD  EPYC "}) == {"device": "cpu",
                                                                    "cpu": "AMD EPYC"}
    assert machine_key({}) == {"device": None}
    assert not same_machine(machine_key(EPYC), machine_key(XEON))
    assert not same_machine(machine_key({**EPYC, "torch_threads": 1}), machine_key(EPYC))
    assert same_machine(machine_key({**EPYC, "os": "other"}), machine_key(EPYC))
    # an old profile lacking a field matches on the rest, but never without the model name
    old = {k: v for k, v in H100.items() if k != "gpu_count"}
    assert same_machine(machine_key(old), machine_key(H100))
    assert not same_machine(machine_key({"device": "cpu"}), machine_key(EPYC))
    assert machine_slug(XEON) == "intel-xeon-platinum-8375c-4cpu-2t"
    assert machine_slug(EPYC) == "amd-epyc-2t"
    assert machine_slug(H100) == "h100-80gb-hbm3"
    assert machine_slug({**H100, "gpu_count": 8}) == "h100-80gb-hbm3-x8"


def test_the_profile_of_this_machine_is_chosen_among_several(machine, tmp_path: Path) -> None:
    write(tmp_path, "p-cpu.json", EPYC)
    xeon = write(tmp_path, "p-cpu-intel.json", XEON)
    write(tmp_path, "p-cpu-more-cpus.json", {**XEON, "logical_cpus": 32})
    write(tmp_path, "p-cuda.json", H100)
    write(tmp_path, "p-cpu-other-pair.json", XEON, pair="q")
    (tmp_path / "p-cpu-broken.json").write_text("{not json")
    machine["hw"] = XEON
    assert resolve_profile("p", "cpu", 0, None, machine["log"].append) == (xeon, None)
    assert not machine["calls"]
    assert "p-cpu-intel.json: measured on this machine (Intel(R) Xeon(R)" in machine["log"][-1]
    machine["hw"] = EPYC
    assert resolve_profile("p", "cpu", 0, None, print)[0] == tmp_path / "p-cpu.json"
    machine["hw"] = {**XEON, "torch_threads": 4}  # --threads 2 is what validate runs at
    assert resolve_profile("p", "cpu", 2, None, print)[0] == xeon


def test_a_full_match_beats_an_old_profile_lacking_a_field(machine, tmp_path: Path) -> None:
    old = write(tmp_path, "p-cuda.json", {k: v for k, v in H100.items() if k != "gpu_count"})
    machine["hw"] = H100
    assert resolve_profile("p", "cuda:0", 0, None, machine["log"].append)[0] == old
    assert "records no gpu_count, matched on the rest" in machine["log"][-1]
    new = write(tmp_path, "p-cuda-h100.json", H100)
    assert resolve_profile("p", "cuda:0", 0, None, machine["log"].append)[0] == new


@pytest.mark.parametrize("extra", [{}, {"dtype": "float32", "random_weights": True}])
def test_no_matching_profile_calibrates_into_this_machines_file(machine, tmp_path: Path,
                                                                extra: dict[str, Any]) -> None:
    write(tmp_path, "p-cpu.json", EPYC)
    machine["hw"] = XEON
    path, note = resolve_profile("p", "cpu", 2, None, machine["log"].append, progress=False,
                                 **extra)
    assert path == tmp_path / "p-cpu-intel-xeon-platinum-8375c-4cpu-2t.json" and note is None
    assert machine["calls"] == [("p", {"device": "cpu", "out": path, "threads": 2,
                                       "progress": False, **extra})]
    assert "no profile of p measured on this machine" in machine["log"][-1]
    assert "p-cpu.json (AMD EPYC (2 logical CPUs, 2 torch threads))" in machine["log"][-1]
    # a file of that name from another machine is never overwritten
    write(tmp_path, path.name, {**XEON, "torch_threads": 3})
    machine["calls"].clear()
    path2, _ = resolve_profile("p", "cpu", 2, None, print, **extra)
    assert path2.name == "p-cpu-intel-xeon-platinum-8375c-4cpu-2t-2.json"
    assert machine["calls"][0][1]["out"] == path2


def test_cuda_calibrates_into_a_gpu_named_file(machine, tmp_path: Path) -> None:
    write(tmp_path, "p-cpu.json", EPYC)
    machine["hw"] = H100
    path, _ = resolve_profile("p", "cuda:0", 0, None, print)
    assert path == tmp_path / "p-cuda-h100-80gb-hbm3.json"
    assert machine["calls"][0][1]["threads"] is None


def test_an_explicit_profile_of_another_machine_gets_a_note(machine, tmp_path: Path) -> None:
    epyc = write(tmp_path, "p-cpu.json", EPYC)
    machine["hw"] = XEON
    path, note = resolve_profile("p", "cpu", 0, epyc, machine["log"].append)
    assert path == epyc and not machine["calls"]
    assert note is not None and "measured on AMD EPYC (2 logical CPUs, 2 torch threads)" in note
    assert "this machine is Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz (4 logical" in note
    assert "speed ratio" in note and machine["log"][-1] == f"note: {note}"
    machine["hw"] = EPYC
    assert resolve_profile("p", "cpu", 0, epyc, print) == (epyc, None)
    with pytest.raises(ValidateError, match="no such file"):
        resolve_profile("p", "cpu", 0, tmp_path / "missing.json", print)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(EntrospecError, match="schema"):
        resolve_profile("p", "cpu", 0, tmp_path / "bad.json", print)


def test_the_shipped_profile_is_found_on_its_machine(monkeypatch) -> None:
    shipped = val.PROFILES / "smollm2-135m-cpu.json"
    if not shipped.is_file():
        pytest.skip("no shipped profile")
    monkeypatch.setattr(cal, "host_info", lambda device: {"hardware": dict(EPYC)})
    monkeypatch.setattr(cal, "calibrate", lambda *a, **k: pytest.fail("calibrated"))
    assert resolve_profile("smollm2-135m", "cpu", 2, None, print) == (shipped, None)


def test_the_note_is_in_the_report(tmp_path: Path) -> None:
    row = {"tokens_per_second": 10.0, "acceptance_rate": None, "mean_accepted_tokens": 1.0,
           "speedup": 1.0}
    doc = {"pair": "p", "device": "cpu", "dataset": "d", "prompts": 1, "max_new_tokens": 4,
           "temperature": 0.0, "trace": "t", "pricing": "profile:x", "hardware": EPYC,
           "profile_note": "profile x was measured on Y", "measured_at": "now",
           "command": "validate", "summary": {"configurations": 1,
                                              "median_abs_error_tokens_per_second": 0.0,
                                              "max_abs_error_tokens_per_second": 0.0},
           "policies": {"verifier-only": {"measured": row, "predicted": row,
                                          "error": {"tokens_per_second": 0.0}}}}
    md = write_report(doc, tmp_path).read_text()
    assert "- **profile from another machine**: profile x was measured on Y" in md
    assert json.loads((tmp_path / "validate.json").read_text())["profile_note"]
