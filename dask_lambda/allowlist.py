"""Restricting a deployed function to named module functions (for locked-down deployments).

A function deployed with ``--allow module.function`` (or ``module.*``) gets
``DASK_LAMBDA_ALLOWED``; its handler then unpickles batches and their inputs with
:class:`RestrictedUnpickler`. Unpickling is where pickles run code, so the check happens there:
every global a pickle names must be an allowed function, or one of the few data types and
dask structures a batch is made of. Code pickled by value (lambdas, ``__main__`` functions,
cloudpickle's dynamic classes) is refused, and so is any other importable function.

Signing (:mod:`.protocol`) decides *who* may run code; the allowlist decides *what* even they may
run.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

ENV_VARIABLE = "DASK_LAMBDA_ALLOWED"

# What a batch is made of, whatever the allowlist: containers and scalars, dask's task spec,
# dask-lambda's own protocol objects, and the reconstructors of numpy arrays.
STRUCTURE = {
    "builtins": {
        "list", "dict", "set", "frozenset", "tuple", "slice", "range", "complex", "bytes",
        "bytearray", "int", "float", "str", "bool", "object",
    },
    "collections": {"OrderedDict"},
    "copyreg": {"_reconstructor"},
    "dask._task_spec": {
        "Task", "DataNode", "Alias", "TaskRef", "List", "Tuple", "Set", "Dict", "GraphNode",
    },
    "dask_lambda.protocol": {"BatchSpec"},
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy.core.numeric": {"_frombuffer"},
    "numpy._core.numeric": {"_frombuffer"},
}  # fmt: skip


def parse(value: str | None) -> list[str]:
    """``"a.f, b.*"`` -> ``["a.f", "b.*"]``."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allowed globals; anything else raises :class:`pickle.UnpicklingError`."""

    def __init__(self, data: bytes, allowed: list[str]):
        super().__init__(io.BytesIO(data))
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if name in STRUCTURE.get(module, ()) or self._allowed(module, name):
            return super().find_class(module, name)
        if module.startswith("numpy") and name.startswith(("float", "int", "uint", "bool")):
            return super().find_class(module, name)  # dtype scalars
        raise pickle.UnpicklingError(
            f"{module}.{name} is not allowed by this function's allowlist"
            f" ({', '.join(self.allowed)}). Deploy it with --allow {module}.{name} (or"
            f" --allow {module}.*), or run only allowed functions. Code pickled by value"
            " (lambdas, functions defined in __main__) cannot be allowed."
        )

    def _allowed(self, module: str, name: str) -> bool:
        qualified = f"{module}.{name}"
        return any(
            qualified == entry or (entry.endswith(".*") and module == entry[:-2])
            for entry in self.allowed
        )


def loads(data: bytes, allowed: list[str]) -> Any:
    return RestrictedUnpickler(data, allowed).load()
