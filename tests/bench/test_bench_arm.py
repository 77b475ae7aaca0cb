"""bench/bench_arm.py's instruction counter: the TCG plugin counts exactly the instructions an aarch64
program executes under qemu-user, so the difference between two runs is the work between them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("qemu-aarch64", "gcc", "aarch64-linux-gnu-gcc")),
    reason="needs qemu-user (with plugin support), gcc and gcc-aarch64-linux-gnu",
)

# A loop of exactly three instructions per iteration (subs, add, b.ne), the count from the command line.
LOOP = """
    .global _start
_start:
    ldr x0, [sp, #16]        // argv[1]
    mov x1, #0
parse:
    ldrb w2, [x0], #1
    cbz w2, counted
    sub w2, w2, #'0'
    mov x3, #10
    madd x1, x1, x3, x2
    b parse
counted:
    mov x4, #0
loop:
    subs x1, x1, #1
    add x4, x4, #1
    b.ne loop
    mov x0, #0
    mov x8, #93              // exit
    svc #0
"""


def test_the_plugin_counts_each_executed_instruction(tmp_path: Path) -> None:
    source = tmp_path / "loop.S"
    source.write_text(LOOP)
    program = tmp_path / "loop"
    subprocess.run(
        ["aarch64-linux-gnu-gcc", "-nostdlib", "-static", "-o", str(program), str(source)], check=True
    )
    plugin = tmp_path / "count_insns.so"
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-o", str(plugin), str(BENCH / "arm_count" / "count_insns.c")],
        check=True,
    )

    def count(iterations: int) -> int:
        out = tmp_path / f"count-{iterations}"
        command = ["qemu-aarch64", "-plugin", f"{plugin},out={out}", str(program), str(iterations)]
        subprocess.run(command, check=True)
        return int(out.read_text())

    # Both counts have four digits: parsing them costs the same, the loops differ by 2000 iterations.
    assert count(3000) - count(1000) == 3 * 2000
