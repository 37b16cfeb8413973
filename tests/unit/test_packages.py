"""What a pickle references, and which of its packages a function lacks (dask_lambda.packages)."""

from __future__ import annotations

import pickle

import cloudpickle
import numpy as np
import pandas as pd

from dask_lambda.packages import PackageSync, needed_packages, referenced_modules


def _uses_numpy_inside(x):
    return np.sqrt(x)


def test_globals_by_reference_and_by_value_imports_are_found():
    by_value = lambda x: pd.Timestamp(x) + np.timedelta64(1, "s")  # noqa: E731
    frame = pd.DataFrame({"a": [1, 2]})
    data = cloudpickle.dumps([by_value, np.float64, {"inline": cloudpickle.dumps(frame)}])
    modules = referenced_modules(data)
    assert {"numpy", "pandas"} <= modules  # subimport of a by-value function's globals
    assert any(m.startswith("pandas.core") for m in modules)  # in a nested pickle
    assert "numpy" in referenced_modules(pickle.dumps(np.float64, protocol=2))  # GLOBAL


def test_strings_that_look_like_modules_are_not_references():
    import operator

    data = cloudpickle.dumps({"names": ["pandas", "numpy"], "call": ("pyarrow",),
                              "getter": operator.attrgetter("scipy")})  # a call on one name
    assert not referenced_modules(data) & {"pandas", "numpy", "pyarrow", "scipy"}
    # bytes that look like a global but whose string lengths are not the strings' (binary data)
    assert referenced_modules(b"\x8c\x05pandas\x8c\x01DataFrame\x93") == set()


def test_needed_packages_follow_extras_and_skip_what_is_not_a_package():
    needed = needed_packages(
        {"dask.dataframe.core", "json", "__main__", "dask_lambda.function", "no_such_module"},
        present=["dask", "numpy"],
    )
    assert set(needed) == {"pandas", "pyarrow"}  # dask[dataframe]'s, nothing else
    assert needed_packages({"pandas.core.frame", "boto3"}, present=["pandas"]) == {}


def test_a_sync_adds_once_and_resends_for_an_import_the_pickle_did_not_show():
    added, lines = [], []

    def add(names):
        added.append(names)
        return {"dask": "1", "numpy": "1", **{n: "1" for name in added for n in name}}

    present = {"dask": "1", "numpy": "1"}
    sync = PackageSync("f", lambda stats: present, add=add, announce=lines.append)
    sync.ensure(cloudpickle.dumps(pd.DataFrame({"a": [1]})))
    sync.ensure(cloudpickle.dumps(pd.DataFrame({"b": [2]})))
    assert len(added) == 1 and "pandas" in added[0] and "pandas" in lines[0]
    error = {"type": "ModuleNotFoundError", "message": "No module named 'tblib.pickling_support'"}
    assert sync.added_for([error])  # added: the batch is sent again
    assert added[-1] == ["tblib"]
    assert sync.added_for([error])  # added meanwhile, for another batch: sent again too
    other = {"type": "ModuleNotFoundError", "message": "No module named 'no_such_module'"}
    assert not sync.added_for([other])
    assert not PackageSync("f", lambda stats: {}).added_for([error])  # no add: the error stands
