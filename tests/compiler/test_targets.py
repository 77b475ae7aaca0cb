"""Targets: the x86 manifest lists what a host needs, so a camera refuses code it cannot execute."""

from __future__ import annotations

import pytest

from edgecam.compiler.artifact import ArtifactError, check_host_can_run, host_cpu_features
from edgecam.compiler.errors import InvalidOptionError, UnknownTargetError
from edgecam.compiler.targets import create_target, host_target_name, target_names, x86
from edgecam.compiler.targets.x86 import LLVM_TO_CPUINFO, TRIPLE


def test_builtin_targets_register_themselves() -> None:
    assert "x86_64" in target_names()
    assert host_target_name() == "x86_64"


@pytest.mark.parametrize(
    ("mcpu", "needed", "absent"),
    [
        ("znver4", {"avx512f", "avx512_vnni", "avx2"}, set()),
        ("znver3", {"avx2", "fma"}, {"avx512f"}),
        ("x86-64", set(), {"avx", "avx2", "avx512f"}),
        ("cascadelake", {"avx512f", "avx512_vnni"}, {"avx_vnni"}),
    ],
)
def test_cpu_features_follow_mcpu(mcpu: str, needed: set[str], absent: set[str]) -> None:
    features = set(create_target("x86_64", mcpu=mcpu).info().cpu_features)
    assert needed <= features
    assert not (absent & features)


def test_a_build_for_a_bigger_cpu_is_refused_here_when_this_host_lacks_its_features() -> None:
    info = create_target("x86_64", mcpu="znver4").info()
    missing = set(info.cpu_features) - host_cpu_features()
    if not missing:
        pytest.skip("this host has every znver4 feature")
    with pytest.raises(ArtifactError) as caught:
        check_host_can_run(info)
    assert caught.value.check == "cpu_features"
    assert sorted(missing)[0] in str(caught.value)


def test_default_build_runs_here() -> None:
    target = create_target("x86_64")
    assert target.runs_here()
    assert target.info().tvm["mcpu"]


def test_every_mapped_llvm_feature_exists_in_llvm() -> None:
    """A misspelt key would never match, silently dropping a feature from the guard."""
    import tvm
    from tvm.target import codegen

    known: set[str] = set()
    for cpu in ("sapphirerapids", "znver4", "bdver2"):  # AMX/FP16, AVX-512 family, FMA4/XOP/TBM
        target = tvm.target.Target({"kind": "llvm", "mtriple": TRIPLE, "mcpu": cpu})
        known |= set(codegen.llvm_get_cpu_features(target))
    assert set(LLVM_TO_CPUINFO) <= known


def test_mattr_removes_features_from_the_code_and_the_manifest() -> None:
    target = create_target("x86_64", mcpu="znver4", mattr=["-avx512f"])
    info = target.info()
    assert "avx2" in info.cpu_features
    assert not [f for f in info.cpu_features if f.startswith("avx512")]
    assert info.tvm["mattr"] == ["-avx512f"]


def test_default_build_leaves_out_what_a_vm_hides_of_its_cpu_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLVM names the CPU model; a hypervisor may hide some of its extensions. Build without them."""
    hidden = host_cpu_features() - {"avx2", "fma"}
    monkeypatch.setattr(x86, "host_cpu_features", lambda: hidden)
    info = create_target("x86_64").info()
    assert {"avx2", "fma"}.isdisjoint(info.cpu_features)
    assert {"-avx2", "-fma"} <= set(info.tvm["mattr"])
    assert "-avx2" not in create_target("x86_64", mcpu=x86.host_cpu()).info().tvm.get("mattr", [])


def test_option_values_are_checked() -> None:
    with pytest.raises(InvalidOptionError) as caught:
        create_target("x86_64", num_cores=0)
    assert "num_cores" in str(caught.value) and "0" in str(caught.value)


def test_a_non_x86_build_host_must_name_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(x86.platform, "machine", lambda: "aarch64")
    with pytest.raises(UnknownTargetError, match="--mcpu"):
        create_target("x86_64").tvm_target()
    assert create_target("x86_64", mcpu="x86-64-v3").tvm_target().mcpu == "x86-64-v3"
