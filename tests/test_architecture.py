"""The architecture's rules that `lint-imports` cannot see: privacy noise is drawn inside `privacy/` only, the top
level stays small, and no function grows past one screen."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "dpsynth"
# Any draw from a Gaussian (or Laplace) source: torch, numpy, or dpsynth's own noise source.
NOISE = re.compile(r"\.normal_?\(|\brandn(_like)?\(|\.laplace\(|add_normal_\(|normal_like\(|\.standard_normal\(")


def _sources(under: Path = SRC) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_file_outside_privacy_draws_noise() -> None:
    offenders = [f"{p.relative_to(SRC)}:{n}" for p in _sources() if "privacy" not in p.relative_to(SRC).parts
                 for n, line in enumerate(p.read_text().splitlines(), 1) if NOISE.search(line)]
    assert not offenders, offenders
    # and the pattern does find the draws where they are
    assert any(NOISE.search(line) for line in (SRC / "privacy" / "noise.py").read_text().splitlines())
    assert any(NOISE.search(line) for line in (SRC / "privacy" / "labels.py").read_text().splitlines())


def test_the_top_level_holds_at_most_six_modules() -> None:
    assert len(list(SRC.glob("*.py"))) <= 6, sorted(p.name for p in SRC.glob("*.py"))


def test_no_function_is_longer_than_80_lines() -> None:
    long = [f"{p.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p in _sources() for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, long
