"""Restricting a deployed function to named module functions (for locked-down deployments).

A function deployed with ``--allow module.function`` (or ``module.*``) gets
``DASK_LAMBDA_ALLOWED`` (:mod:`.contract`); its handler then unpickles batches and their inputs with
:class:`RestrictedUnpickler`. Unpickling is where pickles run code, so the check happens there:
every global a pickle names must be an allowed function, or one of the few data types and
dask structures a batch is made of. Code pickled by value (lambdas, ``__main__`` functions,
cloudpickle's dynamic classes) is refused, and so is any other importable function.

Pickle protocol 4 lets a global name a dotted path (``find_class("m", "f.__globals__.x")`` walks
attributes), which would turn any allowed name into a way to reach anything. So a name is
resolved only if it is an exact entry of an explicit set and has no dot, *before* any attribute
is looked up; ``module.*`` allows the module's own top-level functions and classes (defined in
that module, not imported into it, not private), never a dotted path.

Signing (:mod:`.protocol`) decides *who* may run code; the allowlist decides *what* even they may
run.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

_NUMPY_SCALARS = {
    "bool", "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "longdouble", "complex64", "complex128", "clongdouble",
    "str_", "bytes_", "datetime64", "timedelta64", "intc", "uintc", "intp", "uintp", "longlong",
    "ulonglong", "short", "ushort", "byte", "ubyte", "half", "single", "double", "csingle",
    "cdouble",
}  # fmt: skip

# What a batch is made of, whatever the allowlist: containers and scalars, dask's task spec,
# dask-lambda's own protocol objects, and the reconstructors of numpy arrays, dtypes and scalars.
STRUCTURE: dict[str, frozenset[str]] = {
    module: frozenset(names)
    for module, names in {
        "builtins": {
            "list", "dict", "set", "frozenset", "tuple", "slice", "range", "complex", "bytes",
            "bytearray", "int", "float", "str", "bool", "object",
        },
        "collections": {"OrderedDict"},
        "copyreg": {"_reconstructor"},
        "dask._task_spec": {
            "Task", "DataNode", "Alias", "TaskRef", "List", "Tuple", "Set", "Dict", "GraphNode",
        },
        "dask_lambda.function.protocol": {"BatchSpec", "Inline", "Stored", "task"},
        "dask_lambda.function.calls": {"PersistedValue", "load_persisted"},
        "numpy": {"ndarray", "dtype", *_NUMPY_SCALARS},
        "numpy.core.multiarray": {"_reconstruct", "scalar"},
        "numpy._core.multiarray": {"_reconstruct", "scalar"},
        "numpy.core.numeric": {"_frombuffer"},
        "numpy._core.numeric": {"_frombuffer"},
    }.items()
}  # fmt: skip


# A task-spec container (``List``, ``Tuple``, ``Dict``, ``Set``: ``delayed(f)([a, b])``) pickles
# its function as this one dotted name; it is matched exactly, never resolved by attribute walk.
_CONTAINER_METHODS = {("dask._task_spec", "NestedContainer.to_container")}


def parse(value: str | None) -> list[str]:
    """``"a.f, b.*"`` -> ``["a.f", "b.*"]``."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allowed globals; anything else raises :class:`pickle.UnpicklingError`."""

    def __init__(self, data: bytes, allowed: list[str]):
        super().__init__(io.BytesIO(data))
        self.allowed = allowed
        self.exact: dict[str, set[str]] = {}
        self.whole_modules: set[str] = set()
        for entry in allowed:
            module, _, name = entry.rpartition(".")
            if name == "*":
                self.whole_modules.add(module)
            elif module:
                self.exact.setdefault(module, set()).add(name)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CONTAINER_METHODS:  # exact strings, resolved here, not walked
            from dask._task_spec import NestedContainer

            return NestedContainer.to_container
        if "." not in name and not name.startswith("__"):
            if name in STRUCTURE.get(module, ()) or name in self.exact.get(module, ()):
                return super().find_class(module, name)
            if module in self.whole_modules and not name.startswith("_"):
                found = super().find_class(module, name)
                if getattr(found, "__module__", None) == module:
                    return found
        raise pickle.UnpicklingError(
            f"{module}.{name} is not allowed by this function's allowlist"
            f" ({', '.join(self.allowed)}). Deploy it with --allow {module}.{name} (or"
            f" --allow {module}.* for the module's own functions), or run only allowed functions."
            " Code pickled by value (lambdas, functions defined in __main__) and dotted or"
            " private names cannot be allowed."
        )


def loads(data: bytes, allowed: list[str]) -> Any:
    return RestrictedUnpickler(data, allowed).load()
