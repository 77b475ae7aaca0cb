"""The repository carries its own docs."""

from __future__ import annotations

from pathlib import Path


def test_docs_are_in_the_repository_and_nothing_points_outside_it() -> None:
    """Code and docs point at docs/, never at design notes that live outside the repository."""
    root = Path(__file__).resolve().parents[1]
    assert (root / "docs" / "architecture.md").is_file() and (root / "docs" / "tvm-notes.md").is_file()
    offenders = [
        str(path.relative_to(root))
        for pattern in ("**/*.py", "**/*.md", "**/*.toml", "**/*.yml", "**/*.yaml")
        for path in root.glob(pattern)
        if ".venv" not in path.parts
        and "build" not in path.parts
        and (
            "shared/docs" in path.read_text(errors="replace")
            or "DESIGN.md" in path.read_text(errors="replace")
        )
        and path != Path(__file__).resolve()
    ]
    assert offenders == []


def test_the_readme_documents_every_pass_kind_and_the_compression_commands() -> None:
    """A pass kind registered in compiler/passes/ gets a row in README's table of pass kinds."""
    from edgecam.compiler.passes import pass_kinds
    from edgecam.compiler.passes.base import registered

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")}
    # Only edgecam's own passes: tests register toy kinds in the same process.
    shipped = {k for k in pass_kinds() if registered()[k].__module__.startswith("edgecam.compiler.passes")}
    missing = sorted(shipped - rows)
    assert not missing, f"README.md's table of pass kinds lacks {missing}"
    for command in ("edgecam compress ", "edgecam report "):
        assert command in text
