"""Functions the scheduler tests run in Lambda (pickled by value: see conftest)."""

from __future__ import annotations

import time

import numpy as np


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def double(x):
    return 2 * x


def total(*args):
    return sum(args)


def fail(x):
    raise ValueError(f"task failed on {x}")


class CustomError(Exception):
    def __init__(self, code):
        super().__init__(f"custom error {code}")
        self.code = code


def fail_custom(x):
    raise CustomError(x)


def big_array(n_mb, seed=0):
    return np.random.default_rng(seed).random(n_mb * 1024 * 1024 // 8)


def array_sum(x):
    return float(x.sum())


def nbytes_of(x):
    return len(x)


def slow(x, seconds=0.2):
    time.sleep(seconds)
    return x


def noop(x=None):
    return x


def initializer(value):
    """Record in the runtime process (this module is pickled by value: its globals are not)."""
    import os

    os.environ["TEST_POOL_INIT_VALUE"] = value
    os.environ["TEST_POOL_INIT_COUNT"] = str(int(os.environ.get("TEST_POOL_INIT_COUNT", "0")) + 1)


def initialized_value(_):
    import os

    return os.environ.get("TEST_POOL_INIT_VALUE"), os.environ.get("TEST_POOL_INIT_COUNT")


def crash(x):
    import os

    os._exit(1)


def call_by_name(module: str, function: str, *args):
    """Call ``module.function(*args)`` importing it inside Lambda (nothing pickled by value)."""
    import importlib

    print(f"calling {module}.{function}{args}")
    return getattr(importlib.import_module(module), function)(*args)


def module_file(module: str) -> str:
    import importlib

    return importlib.import_module(module).__file__


def fail_first_time(marker: str, value):
    """Raise on the first run (no marker file yet), succeed afterwards."""
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return value


def chunk_of(values, seed):
    return [v * seed for v in values]


def slow_first_time(marker: str, value, seconds: float):
    """A straggler: the first run (no marker yet) sleeps ``seconds``; later runs are quick."""
    import os
    import time

    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(seconds)
    return value


def count_run(marker: str) -> None:
    """Append one line to ``marker`` per run (to count how often a task ran)."""
    with open(marker, "a") as f:
        f.write("ran\n")


class CustomBaseException(BaseException):
    pass


def raise_base(marker: str, kind: str):
    """Record the run, then raise a BaseException that is not an Exception."""
    import sys

    count_run(marker)
    if kind == "sys.exit(0)":
        sys.exit(0)
    raise {
        "SystemExit(3)": SystemExit(3),
        "KeyboardInterrupt": KeyboardInterrupt("from a task"),
        "custom": CustomBaseException("custom base"),
    }[kind]


def huge_message(n: int, x=None):
    raise ValueError(f"{x}:" + "m" * n)


def recurse(n: int):
    return recurse(n + 1)


class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("__str__ is broken")


def fail_with_bad_str(x):
    raise BadStr(x)


def size_after(x, _):
    """``len(x)``, once another task has finished (so ``x`` crosses S3 between batches)."""
    return len(x)


def shout(x):
    """Print a few lines (the function's log), then return ``x``."""
    for i in range(3):
        print(f"line {i} of task {x}")
    return x


def crash_first_time(x: int, folder: str) -> int:
    """Kill the runtime the first time a multiple of ten runs (a flaky native library, a memory
    spike); later runs, and every other element, return ``x``."""
    import os

    marker = os.path.join(folder, str(x))
    if x % 10 == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return x


def allocate(megabytes: int) -> int:
    """Hold ``megabytes`` of memory for a moment; return how many bytes."""
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(0.5)
    return len(block)


def memory_size(_=None) -> int:
    """The memory (MB) of the function this task runs in."""
    import os

    return int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"])


def imports_without_compiling(packages=("dask", "numpy", "dask_lambda.function"), limit=30):
    """Inside Lambda: import modules of the shipped packages not imported yet, recording every
    source Python compiles while doing so, then a control module with no bytecode (which must
    be compiled, or the recording sees nothing); and try writing beside the code."""
    import importlib
    import importlib.machinery
    import os
    import pkgutil
    import sys
    import tempfile

    compiled: list[str] = []
    loader = importlib.machinery.SourceFileLoader
    original = loader.source_to_code

    def recording(self, data, path, *args, **kwargs):
        compiled.append(str(path))
        return original(self, data, path, *args, **kwargs)

    imported, files = [], {}
    loader.source_to_code = recording
    try:
        for package in packages:
            module = importlib.import_module(package)
            files[package] = module.__file__
            fresh = [info.name for info in pkgutil.iter_modules(module.__path__, package + ".")
                     if info.name not in sys.modules and "test" not in info.name]  # fmt: skip
            for name in fresh[:limit]:
                try:
                    importlib.import_module(name)
                except Exception:  # an optional dependency missing: its code was still loaded
                    pass
                imported.append(name)
        shipped = list(compiled)
        control = tempfile.mkdtemp()
        with open(os.path.join(control, "control_module_without_bytecode.py"), "w") as f:
            f.write("VALUE = 1\n")
        sys.path.insert(0, control)
        importlib.import_module("control_module_without_bytecode")
    finally:
        loader.source_to_code = original
    try:
        with open(os.path.join(os.environ["LAMBDA_TASK_ROOT"], "written-by-a-task"), "w"):
            pass
        writable = True
    except OSError:
        writable = False
    return {"imported": imported, "compiled": shipped, "control": compiled[len(shipped):],
            "files": files, "code_writable": writable}  # fmt: skip


def fit_tiny_model() -> float:
    """A scikit-learn model fitted on a pandas frame read back from Parquet (pyarrow): the
    three libraries of a stack too large for a zip, used together."""
    import io

    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "y": [0, 0, 0, 1, 1, 1]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="pyarrow")
    frame = pd.read_parquet(io.BytesIO(buffer.getvalue()), engine="pyarrow")
    model = LogisticRegression().fit(frame[["x"]], frame["y"])
    return float(model.score(frame[["x"]], frame["y"]))


def image_view(client_dir: str, client_pid: int) -> dict:
    """What a task of an image function sees of its filesystem and processes (``client_dir``
    and ``client_pid``: the client's working folder and process, which it must not)."""
    import os

    import awslambdaric

    try:
        open("/var/task/written-by-a-task", "w").close()
        writable = True
    except OSError:
        writable = False
    try:
        os.kill(client_pid, 0)
        client_process = True
    except OSError:
        client_process = False
    with open("/proc/self/status") as status:
        capabilities = next(line.split()[1] for line in status if line.startswith("CapEff"))
    return {
        "client_process": client_process,
        "capabilities": capabilities,
        "awslambdaric": awslambdaric.__file__,
        "entrypoint": os.access("/lambda-entrypoint.sh", os.X_OK),
        "bootstrap": os.access("/var/runtime/bootstrap", os.X_OK),
        "task_root": os.environ.get("LAMBDA_TASK_ROOT"),
        "client_folder": os.path.exists(client_dir),
        "writable_task": writable,
    }


def registry_token_error() -> str:
    """What a task gets when it asks ECR for a registry token with its role's credentials."""
    import boto3
    import botocore.exceptions

    try:
        boto3.client("ecr").get_authorization_token()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    return "granted"
