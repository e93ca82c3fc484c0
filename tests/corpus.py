"""The example flows as one program: the corpus the robustness tests break and edit."""

from __future__ import annotations

from pathlib import Path

from flowlang.source import SourceFile

ROOT = Path(__file__).resolve().parent.parent


def example_program() -> list[SourceFile]:
    """Every `flows/*.flow` file (they refer to each other, so they compile together)."""
    files = sorted((ROOT / "flows").glob("*.flow"))
    assert files, "flows/ has no .flow files"
    return [SourceFile(f"flows/{p.name}", p.read_text(encoding="utf-8")) for p in files]
