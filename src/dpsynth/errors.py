"""User-facing errors.

A `DpsynthError` is a problem with the user's input or request (a missing column, an unreachable ε, a model
path that is not a causal LM). The CLI prints its message as one sentence and exits with code 2, without a
traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


def first_line(err: BaseException | None) -> str:
    """An exception's message cut to its first line (at most 200 characters), for a one-sentence DpsynthError that
    wraps a library's error; its type name when it has no message."""
    text = str(err).strip().splitlines()[0] if err is not None and str(err).strip() else type(err).__name__
    return text[:200]


class DpsynthError(Exception):
    """A clear, one-sentence problem with the user's input that says what is wrong and how to fix it."""
