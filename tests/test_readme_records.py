"""README figures cite their records: every measured figure in README.md links a JSON record in
bench/results/, and every record README.md or bench/README.md names exists.

A figure is a number with a unit that only a measurement gives (ms, µs, min, ×, %, GFLOP/s, GMAC/s,
bytes, fractional quantization steps). Configuration examples live in fenced code blocks or inline
code spans, which are left out: `max_fps: 10` or `--trials 1500` are settings, not results.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# bench/machine_info.save_record names a record <benchmark>-<YYYYMMDD>-<host>[-suffix].json; a
# family of runs may be written once with a brace list (`bench_runtime-20261203-vm-run{1,2,3}.json`).
# A template such as `bench_cpu_device-<model>-<date>-<host>.json` names no record and does not match.
_RECORD_NAME = re.compile(r"bench_\w+-[\w{},.-]*?\.json")
_RECORD_LINK = re.compile(r"\]\((bench/results/[^)\s]+\.json)\)")
_NUMBER = r"\d(?:[\d.,]*\d)?\s?"
_FIGURE = re.compile(
    "|".join(
        [
            _NUMBER + r"(?:ms|µs|min)\b",  # times
            _NUMBER + r"×(?!\s?\d)",  # ratios; `3×3` is a kernel's shape
            _NUMBER + r"%",  # accuracy, agreement, shares
            _NUMBER + r"(?:GFLOP|GMAC|TFLOP)/s",  # throughput
            _NUMBER + r"(?:[KMG]i?B)\b",  # measured sizes
            r"\d+\.\d+\s+steps",  # a measured distance in quantization steps (the bound is whole)
        ]
    )
)
_INLINE_CODE = re.compile(r"`[^`]*`")
# A setting's default ("default 64 MiB", "default: 5 s") is configuration, not a measurement.
_DEFAULT = re.compile(r"\bdefaults?:?\s+(?:is\s+)?" + _NUMBER + r"\S+")
_LIST_ITEM = re.compile(r"\s*(?:[-*+]|\d+\.)\s")


def expand_braces(name: str) -> list[str]:
    """`a{1,2}b` → [`a1b`, `a2b`]; names without braces stay as they are."""
    parts = re.split(r"\{([^{}]*)\}", name)
    choices = [[part] if i % 2 == 0 else part.split(",") for i, part in enumerate(parts)]
    return ["".join(pick) for pick in itertools.product(*choices)]


def mentioned_records(markdown: str) -> set[str]:
    """File names of every record the text names, as a link or in prose."""
    return {name for match in _RECORD_NAME.findall(markdown) for name in expand_braces(match)}


def missing_records(markdown: str, base: Path) -> list[str]:
    """Cited records that do not exist: links resolved against `base` (the markdown file's folder),
    names in prose looked up in bench/results/."""
    missing = [link for link in _RECORD_LINK.findall(markdown) if not (base / link).is_file()]
    missing += [name for name in sorted(mentioned_records(markdown)) if not (RESULTS / name).is_file()]
    return missing


def paragraphs(markdown: str) -> list[str]:
    """Prose blocks outside fenced code: split at blank lines, list items and table rows (each row
    its own block: a table's rows are separate claims)."""
    blocks: list[str] = []
    current: list[str] = []
    fenced = False

    def flush() -> None:
        if current:
            blocks.append("\n".join(current))
            current.clear()

    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            flush()
            fenced = not fenced
        elif fenced:
            continue
        elif not line.strip():
            flush()
        elif line.lstrip().startswith("|"):
            flush()
            blocks.append(line)
        else:
            if _LIST_ITEM.match(line):
                flush()
            current.append(line)
    flush()
    return blocks


def measured_figures(paragraph: str) -> list[str]:
    """The figures in a paragraph's prose (inline code spans and link targets left out)."""
    prose = _DEFAULT.sub("", _INLINE_CODE.sub("", re.sub(r"\]\([^)]*\)", "]", paragraph)))
    return [match.group(0) for match in _FIGURE.finditer(prose)]


def uncited_paragraphs(markdown: str) -> list[str]:
    """Paragraphs that state a measured figure and link no record in bench/results/."""
    return [p for p in paragraphs(markdown) if measured_figures(p) and not _RECORD_LINK.search(p)]


def test_every_record_the_readmes_cite_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    bench_readme = (ROOT / "bench" / "README.md").read_text()
    # Both documents cite records: an empty match would mean the pattern broke, not that all is well.
    assert _RECORD_LINK.findall(readme) and mentioned_records(bench_readme)
    assert missing_records(readme, ROOT) == []
    assert missing_records(bench_readme, ROOT / "bench") == []


def test_every_readme_paragraph_with_a_measured_figure_links_a_record() -> None:
    readme = (ROOT / "README.md").read_text()
    offenders = [(measured_figures(p), p.splitlines()[0]) for p in uncited_paragraphs(readme)]
    assert offenders == []


def test_the_checks_tell_figures_from_settings_and_find_missing_records(tmp_path: Path) -> None:
    """The checks can fail: an uncited time, ratio and percentage are found; settings in code and a
    kernel shape are not figures; a link or a name of a record that does not exist is reported."""
    existing = sorted(RESULTS.glob("bench_*.json"))[0].name
    text = "\n".join(
        [
            "MobileNetV2 takes 0.60 ms on device, 7.2× faster.",
            "",
            f"Cited: 0.63 ms ([{existing}](bench/results/{existing})).",
            "",
            "- a list item with 91.9% agreement",
            "",
            "A 3×3 conv, `--trials 1500` and `max_fps: 10 ms` are not figures, nor a limit (default 64 MiB).",
            "",
            "```yaml",
            "shadow: {fraction: 0.05}   # 5% of frames",
            "```",
            "",
            "Gone: [x](bench/results/bench_gone-20990101-vm.json), bench_other-20990101-vm-run{1,2}.json.",
        ]
    )
    assert uncited_paragraphs(text) == [
        "MobileNetV2 takes 0.60 ms on device, 7.2× faster.",
        "- a list item with 91.9% agreement",
    ]
    assert missing_records(text, tmp_path / "elsewhere") == [
        f"bench/results/{existing}",  # resolved against the wrong folder: not found
        "bench/results/bench_gone-20990101-vm.json",
        "bench_gone-20990101-vm.json",
        "bench_other-20990101-vm-run1.json",
        "bench_other-20990101-vm-run2.json",
    ]
    assert missing_records(text, ROOT) == [
        "bench/results/bench_gone-20990101-vm.json",
        "bench_gone-20990101-vm.json",
        "bench_other-20990101-vm-run1.json",
        "bench_other-20990101-vm-run2.json",
    ]
