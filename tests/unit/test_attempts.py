"""The attempt policy (dask_lambda.attempts) on its own: no Lambda, a fake ``send``."""

from __future__ import annotations

import pytest
from dask._task_spec import Task, TaskRef

from dask_lambda.attempts import (
    BatchPolicy,
    InvocationAttempts,
    SplitBatch,
    failure_kind,
    retryable_function_error,
    retryable_service_error,
    run_batch,
    straggler_limit,
)
from dask_lambda.exceptions import LambdaFunctionError
from dask_lambda.function.protocol import BatchResponse, BatchSpec, Inline, Result


class Counts:
    def __init__(self):
        self.counts: dict[str, int] = {}

    def add(self, **counts):
        for name, value in counts.items():
            self.counts[name] = self.counts.get(name, 0) + value


def inc(x):
    return x + 1


def spec_of(*keys, chain=False) -> BatchSpec:
    tasks = []
    for i, key in enumerate(keys):
        argument = TaskRef(keys[i - 1]) if chain and i else i
        tasks.append(Task(key, inc, argument))
    return BatchSpec("c" * 16, list(keys), tasks, list(keys), {})


def ok(n: int) -> Result:
    return Result("ok", "inline", b"%d" % n, 0, None)


def answer(spec: BatchSpec, failing=()) -> BatchResponse:
    """What the function returns for ``spec`` when the tasks in ``failing`` raise."""
    errors = {spec.keys.index(k): {"index": spec.keys.index(k), "type": "ValueError"}
              for k in failing if k in spec.keys}  # fmt: skip
    results = [
        Result("error", None, None, 0, None) if k in failing else ok(i)
        for i, k in enumerate(spec.outputs)
    ]
    return BatchResponse(results, errors, {"inline_bytes": 1}, timings=[[0, 1, 1]] * len(spec.keys))


def crash(keys, error_type="Runtime.ExitError", message="exit status 1") -> LambdaFunctionError:
    return LambdaFunctionError("fn", error_type, message, keys)


class Scripted:
    """A ``send`` that answers each call from a script: a set of failing keys, or an exception
    (or a function of the spec returning either)."""

    def __init__(self, *script):
        self.script = list(script)
        self.calls: list[tuple[list, object, bool, bool]] = []

    def __call__(self, spec, tier, split, confirm_memory):
        self.calls.append((list(spec.keys), tier, split, confirm_memory))
        step = self.script.pop(0) if self.script else set()
        if callable(step):
            step = step(spec, tier, split)
        if isinstance(step, BaseException):
            raise step
        return answer(spec, step)


# -- a task's own errors --------------------------------------------------------------------------
def test_only_the_failing_tasks_are_charged_an_attempt():
    """a fails, then b fails: each used one retry of its own, so the third run succeeds. A budget
    shared by the batch (every task charged for any failure) would give up after the second."""
    send = Scripted({"a"}, {"b"}, set())
    counts = Counts()
    response = run_batch(spec_of("a", "b"), send, BatchPolicy(retries_of=lambda key: 1), counts)
    assert not response.errors
    assert len(send.calls) == 3
    assert counts.counts == {"task_retries": 2}


def test_a_task_past_its_budget_returns_its_error():
    send = Scripted({"a"}, {"a"}, set())
    response = run_batch(spec_of("a", "b"), send, BatchPolicy(retries_of=lambda key: 1), Counts())
    assert set(response.errors) == {0}
    assert len(send.calls) == 2


def test_budgets_are_per_task():
    budgets = {"a": 0, "b": 2}
    send = Scripted({"b"}, {"b"}, set())
    response = run_batch(spec_of("a", "b"), send, BatchPolicy(retries_of=budgets.get), Counts())
    assert not response.errors and len(send.calls) == 3
    send = Scripted({"a"})
    response = run_batch(spec_of("a", "b"), send, BatchPolicy(retries_of=budgets.get), Counts())
    assert set(response.errors) == {0} and len(send.calls) == 1


def test_a_batch_that_cannot_be_loaded_is_not_retried():
    calls = []

    def send(spec, tier, split, confirm_memory):
        calls.append(spec.keys)
        return BatchResponse([], {}, {}, fatal={"type": "ModuleNotFoundError"})

    response = run_batch(spec_of("a"), send, BatchPolicy(retries_of=lambda key: 5), Counts())
    assert response.fatal is not None and len(calls) == 1


# -- a runtime failure: split ---------------------------------------------------------------------
def test_a_runtime_failure_splits_the_batch_until_the_culprit_is_alone():
    def step(spec, tier, split):
        if "c" in spec.keys:
            assert split == (len(spec.keys) > 1)
            return SplitBatch(crash(spec.keys)) if split else crash(spec.keys)
        return set()

    send = Scripted(*[step] * 10)
    counts = Counts()
    with pytest.raises(LambdaFunctionError):  # a compute fails as a whole
        run_batch(spec_of("a", "b", "c", "d"), send, BatchPolicy(lambda key: 0), counts)
    assert ["c"] in [keys for keys, *_ in send.calls]
    assert counts.counts["splits"] == 2


def test_isolated_a_crashing_call_fails_alone():
    def step(spec, tier, split):
        if "c" in spec.keys:
            return SplitBatch(crash(spec.keys)) if split else crash(spec.keys)
        return set()

    send = Scripted(*[step] * 10)
    policy = BatchPolicy(lambda key: 3, isolate=True)
    response = run_batch(spec_of("a", "b", "c", "d"), send, policy, Counts())
    assert set(response.errors) == {2}
    assert isinstance(response.errors[2]["failure"], LambdaFunctionError)
    assert [r.status for r in response.results] == ["ok", "ok", "error", "ok"]
    # The infrastructure's retries were spent: the task's own budget does not re-run it.
    assert sum(keys == ["c"] for keys, *_ in send.calls) == 1


def test_split_halves_pass_values_along_a_chain():
    """The second half reads what the first made: its inputs are the first half's outputs."""
    seen = []

    def step(spec, tier, split):
        seen.append((list(spec.keys), dict(spec.inputs), list(spec.outputs)))
        return SplitBatch(crash(spec.keys)) if len(spec.keys) == 4 else set()

    spec = spec_of("a", "b", "c", "d", chain=True)
    spec.outputs = ["d"]
    response = run_batch(spec, Scripted(step, step, step), BatchPolicy(lambda key: 0), Counts())
    first, second = seen[1], seen[2]
    assert first[0] == ["a", "b"] and first[2] == ["b"]  # b: what the second half needs
    assert second[0] == ["c", "d"] and set(second[1]) == {"b"}
    assert isinstance(second[1]["b"], Inline)
    assert [r.status for r in response.results] == ["ok"]


# -- out of memory: escalate ----------------------------------------------------------------------
def test_a_task_out_of_memory_runs_once_more_on_the_next_tier():
    def step(spec, tier, split):
        if tier is None:
            return crash(spec.keys, "Runtime.OutOfMemory", "Runtime exited: out of memory")
        return set()

    send = Scripted(step, step)
    counts = Counts()
    policy = BatchPolicy(lambda key: 0, next_tier={None: 4096}.get)
    assert not run_batch(spec_of("a"), send, policy, counts).errors
    assert [(tier, confirm) for _, tier, _, confirm in send.calls] == [(None, False), (4096, True)]
    assert counts.counts == {"infra_retries": 1, "escalations": 1}


def test_without_a_larger_tier_memory_failure_raises():
    send = Scripted(crash(["a"], "Runtime.OutOfMemory"))
    with pytest.raises(LambdaFunctionError):
        run_batch(
            spec_of("a"), send, BatchPolicy(lambda key: 0, next_tier=lambda t: None), Counts()
        )
    assert send.calls[0][3] is True  # confirmed at the same size first (the invoker's retry)


def test_other_failures_are_not_escalated():
    send = Scripted(crash(["a"], "Sandbox.Timedout"))
    with pytest.raises(LambdaFunctionError):
        run_batch(
            spec_of("a"), send, BatchPolicy(lambda key: 0, next_tier={None: 4096}.get), Counts()
        )
    assert len(send.calls) == 1


# -- one invocation ---------------------------------------------------------------------------
def attempts(**kw) -> InvocationAttempts:
    options = dict(retries=3, backoff=0.1, throttle_retries=5, throttle_backoff=0.1,
                   uniform=lambda low, high: high)  # fmt: skip
    return InvocationAttempts(**{**options, **kw})


def verdicts(policy: InvocationAttempts, errors) -> list:
    found = []
    for error in errors:
        policy.start()
        found.append(policy.failed(error))
    return found


def test_infrastructure_failures_back_off_exponentially_then_give_up():
    found = verdicts(attempts(), [crash([], "ServiceException", "")] * 4)
    assert [v.action for v in found] == ["retry", "retry", "retry", "exhausted"]
    assert [v.delay for v in found[:3]] == [0.1, 0.2, 0.4]


def test_throttling_has_a_budget_of_its_own():
    throttled = LambdaFunctionError("fn", "TooManyRequestsException", "Rate exceeded")
    found = verdicts(attempts(retries=0, throttle_retries=2), [throttled] * 3)
    assert [v.action for v in found] == ["retry", "retry", "throttled"]


def test_a_runtime_failure_of_several_tasks_is_split_not_retried():
    for error_type in ("Runtime.ExitError", "Sandbox.Timedout", "Runtime.OutOfMemory"):
        (verdict,) = verdicts(attempts(tasks=3, split=True), [crash([], error_type)])
        assert verdict.action == "split"
    (verdict,) = verdicts(attempts(tasks=3, split=False), [crash([], "Runtime.ExitError")])
    assert verdict.action == "retry"


def test_a_single_task_failing_the_same_way_twice_is_deterministic():
    oom = crash(["a"], "Runtime.OutOfMemory")
    assert [v.action for v in verdicts(attempts(), [oom, oom])] == ["retry", "repeated"]
    assert verdicts(attempts(confirm_memory=False), [oom])[0] == ("repeated", 0.0, "memory")
    timeout = crash(["a"], "Sandbox.Timedout")
    assert verdicts(attempts(), [timeout, timeout])[1] == ("repeated", 0.0, "timeout")
    # Different failures, or several tasks, are not a repetition.
    assert verdicts(attempts(), [oom, timeout])[1].action == "retry"
    assert verdicts(attempts(tasks=2), [oom, oom])[1].action == "retry"


def test_which_errors_are_retryable():
    assert retryable_function_error("Runtime.ExitError")
    assert retryable_function_error("Sandbox.Timedout")
    assert retryable_function_error("TransientError")
    for deployment_error in (
        "Runtime.ImportModuleError",
        "Runtime.HandlerNotFound",
        "Runtime.UserCodeSyntaxError",
        "IntegrityError",
        "Unhandled",
    ):
        assert not retryable_function_error(deployment_error)  # fmt: skip
    assert retryable_service_error("TooManyRequestsException", 429)
    assert retryable_service_error("Anything", 503)
    assert not retryable_service_error("ResourceNotFoundException", 404)
    assert not retryable_service_error("AccessDeniedException", 403)


def test_failure_kinds():
    assert failure_kind(crash([], "Sandbox.Timedout")) == "timeout"
    assert failure_kind(crash([], "Runtime.OutOfMemory")) == "memory"
    assert failure_kind(crash([], "Runtime.ExitError", "Runtime.OutOfMemory: 512 MB")) == "memory"
    assert failure_kind(crash([], "Runtime.ExitError")) is None


def test_straggler_limit():
    assert straggler_limit([1.0, 2.0], 3.0, 0.5) is None
    assert straggler_limit([1.0, 2.0, 3.0], 3.0, 0.5) == 6.0
    assert straggler_limit([0.1, 0.1, 0.1], 3.0, 5.0) == 5.0
