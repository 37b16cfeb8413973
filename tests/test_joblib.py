"""joblib's backend ``"lambda"`` (issue 13): scikit-learn's ``n_jobs`` runs in Lambda."""

from __future__ import annotations

import pytest

joblib = pytest.importorskip("joblib")
sklearn = pytest.importorskip("sklearn")

import dask_lambda.joblib  # noqa: E402,F401  registers "lambda"
from dask_lambda import LambdaCluster  # noqa: E402


@pytest.fixture(scope="module")
def learning():
    # What the tasks import, deployed as on AWS: scikit-learn (with scipy, joblib, ...).
    with LambdaCluster(packages=["scikit-learn"]) as cluster:
        yield cluster


def test_parallel_runs_its_calls_in_lambda(learning):
    import os

    before = learning.invoker.stats.invocations
    with joblib.parallel_config(backend="lambda"):
        results = joblib.Parallel(n_jobs=-1)(joblib.delayed(os.getpid)() for _ in range(40))
        squares = joblib.Parallel(n_jobs=-1)(joblib.delayed(pow)(i, 2) for i in range(100))
    assert squares == [i * i for i in range(100)]
    assert os.getpid() not in results  # not this process: the runtimes'
    assert learning.invoker.stats.invocations > before


def test_grid_search_with_all_jobs(learning):
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": [0.01, 0.1, 1]}
    before = learning.invoker.stats.invocations
    with joblib.parallel_config(backend="lambda"):
        remote = GridSearchCV(SVC(), grid, n_jobs=-1, cv=3).fit(X, y)
    local = GridSearchCV(SVC(), grid, n_jobs=1, cv=3).fit(X, y)
    assert remote.best_params_ == local.best_params_
    assert remote.best_score_ == pytest.approx(local.best_score_)
    assert learning.invoker.stats.invocations > before  # the fits ran in Lambda


def test_a_failing_call_raises_its_error(learning):
    with joblib.parallel_config(backend="lambda"), pytest.raises(ZeroDivisionError):
        joblib.Parallel(n_jobs=2)(joblib.delayed(divmod)(1, i) for i in (1, 0, 2))
