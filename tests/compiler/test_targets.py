"""Targets: the x86 manifest lists what a host needs, so a camera refuses code it cannot execute."""

from __future__ import annotations

import pytest

from edgecam.compiler.artifact import ArtifactError, check_host_can_run, host_cpu_features
from edgecam.compiler.targets import create_target, host_target_name, target_names


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
