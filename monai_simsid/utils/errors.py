"""Errors raised for bad user input.

Every error names the offending file and the problem in one line, so a batch run can log it and move on.
"""

from __future__ import annotations

import os

__all__ = ["InputError", "find_input_error"]


class InputError(ValueError):
    """A user-supplied file or datalist cannot be used.

    Args:
        path: the offending file or folder.
        problem: a short description of what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def find_input_error(exc: BaseException) -> InputError | None:
    """The :class:`InputError` behind ``exc``, if any.

    MONAI's ``Compose`` wraps every transform error in a ``RuntimeError``; this walks the cause chain so the caller
    can report the one clear line instead of the wrapper.
    """
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, InputError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
