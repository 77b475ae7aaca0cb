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
