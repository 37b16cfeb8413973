"""Small functions that tasks built by the client call inside Lambda.

They live in the deployed package, so tasks refer to them by import instead of pickling them.
"""

from __future__ import annotations

from typing import Any

_initialized: set[str] = set()


def run_chunk(function, chunk: list[tuple]) -> list:
    """``[function(*args) for args in chunk]``: one task for a chunk of ``Executor.map``."""
    return [function(*args) for args in chunk]


def call(
    function, args: tuple, kwargs: dict, initializer=None, initargs=(), token: str = ""
) -> Any:
    """``function(*args, **kwargs)``, after running ``initializer`` once per runtime."""
    if initializer is not None and token not in _initialized:
        initializer(*initargs)
        _initialized.add(token)
    return function(*args, **kwargs)
