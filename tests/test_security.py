"""Attacks and careless use, each tried for real against the embedded local Lambda.

One test per promise of docs/guarantees.rst: an allowlist that dotted names cannot
escape; spilled objects that whoever can write the bucket cannot swap; references that are never
fetched unsigned, outside the function's bucket or past their size; errors that always fit a
response and keep their type; ``clean`` and ``deploy`` that never touch what is not theirs; and a
package that never ships secrets.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import sys
import threading
import time
import zipfile
from pathlib import Path

import dask
import pytest
import tasks
from conftest import DOTTED_ATTACKS, cli, evil_pickle, global_pickle, spill_objects, unique

from dask_lambda import LambdaCluster, LambdaExecutor, LambdaFunctionError
from dask_lambda.function import protocol
from dask_lambda.function.protocol import IntegrityError


def _run_payload(cluster: LambdaCluster, spec: bytes) -> dict:
    return {"op": "run", "spec": spec, "inline_limit": 65536, "response_limit": 4_000_000,
            "store": {"bucket": cluster.bucket, "prefix": cluster.prefix}}  # fmt: skip


# -- 1. the allowlist and dotted names (the unpickler alone: tests/unit/test_function_safety.py)
def test_allowlisted_function_cannot_be_escaped_through_dotted_names(
    local, aws_env, bucket, tmp_path, monkeypatch
):
    folder = tmp_path / "allowed"
    folder.mkdir()
    (folder / "vetted.py").write_text("def double(x):\n    return 2 * x\n")
    (folder / "wild.py").write_text("import os\n\ndef double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(folder))
    name = unique("locked")
    cli("deploy", name, str(folder / "vetted.py"), str(folder / "wild.py"), "--allow",
        "vetted.double", "--allow", "wild.*", "--create-role", "--bucket", bucket)  # fmt: skip
    marker = tmp_path / "pwned"
    with LambdaCluster(function_name=name) as cluster:
        for module, attribute in DOTTED_ATTACKS[:4]:
            opener = f"open({str(marker)!r}, 'w')"
            attack = global_pickle(module, attribute, [("eval",), (opener,)])
            response = cluster.invoker.call(_run_payload(cluster, attack))  # signed: an insider
            assert response["fatal"]["type"] == "UnpicklingError", response["fatal"]
            assert "not allowed" in response["fatal"]["message"]
        with LambdaExecutor(cluster=cluster) as ex:  # what is allowed still runs
            wild = importlib.import_module("wild")
            assert ex.submit(wild.double, 5).result(timeout=60) == 10
    assert not marker.exists()


# -- 2. spilled objects can't be swapped by whoever can write the bucket ---------------------------
def _overwrite_when_written(store, prefix: str, payload_for, done: threading.Event) -> list:
    """An attacker with write access to the bucket (no key, no invoke) swapping objects."""
    swapped: list[str] = []

    def attack():
        deadline = time.monotonic() + 60
        while not swapped and time.monotonic() < deadline and not done.is_set():
            for name in store.list(prefix + "/"):
                if "/leases/" in name:  # the client's lease is no value to swap
                    continue
                size = store.client.head_object(Bucket=store.bucket, Key=name)["ContentLength"]
                store.client.put_object(Bucket=store.bucket, Key=name, Body=payload_for(size))
                swapped.append(name)
            time.sleep(0.02)

    threading.Thread(target=attack, daemon=True).start()
    return swapped


def test_swapped_intermediate_is_refused_inside_the_function(cluster, tmp_path):
    marker = str(tmp_path / "pwned-in-function")

    def same_size(size):  # the digest, not the size, must catch this one
        evil = evil_pickle(marker)
        return evil + b"\0" * (size - len(evil))

    # Every runtime warm first: a cold one (unpacking the session's dependencies) running the
    # producer would leave the attacker no window before the consumer reads.
    dask.compute(*[dask.delayed(tasks.slow)(i, 1) for i in range(2)], scheduler=cluster)
    produced = dask.delayed(tasks.big_array)(1)  # 1 MB: spilled, fetched by the next batch
    waiting = dask.delayed(tasks.slow)(0, 3)  # the attacker's window
    consumer = dask.delayed(tasks.size_after)(produced, waiting)
    done = threading.Event()
    swapped = _overwrite_when_written(cluster.store, cluster.prefix, same_size, done)
    with pytest.raises(IntegrityError, match="not the one dask-lambda wrote") as info:
        consumer.compute(scheduler=cluster)
    done.set()
    assert swapped and swapped[0] in str(info.value)
    assert not os.path.exists(marker)
    assert spill_objects(cluster) == []


def test_swapped_final_result_is_refused_on_the_client(cluster, tmp_path):
    marker = str(tmp_path / "pwned-on-client")
    fast = dask.delayed(tasks.chunk_of)(list(range(1000)), 1)  # written to S3 first
    slow = dask.delayed(tasks.slow)(1, 3)  # the attacker's window
    done = threading.Event()
    with LambdaCluster(inline_limit=0) as small:  # every result goes through S3
        attack = evil_pickle(marker)
        swapped = _overwrite_when_written(small.store, small.prefix, lambda _: attack, done)
        with pytest.raises(IntegrityError) as info:
            dask.compute(fast, slow, scheduler=small)
        done.set()
        assert swapped and swapped[0] in str(info.value)
        assert spill_objects(small) == []
    assert not os.path.exists(marker)


def test_swapped_input_named_by_a_signed_batch_is_refused(cluster, tmp_path):
    """An uploaded literal (or any input) whose bytes changed after the batch was signed."""
    import cloudpickle
    from dask._task_spec import Task, TaskRef

    marker = str(tmp_path / "pwned-input")
    name = f"{cluster.prefix}/{'e' * 16}/{'f' * 32}"
    stored = cluster.store.put(name, cloudpickle.dumps(list(range(100))))
    evil = evil_pickle(marker)
    cluster.store.client.put_object(
        Bucket=cluster.bucket, Key=name, Body=evil + b"\0" * (stored.nbytes - len(evil))
    )
    spec = protocol.BatchSpec("e" * 16, ["out"], [Task("out", len, TaskRef("data"))], ["out"],
                              {"data": stored})  # fmt: skip
    response = cluster.invoker.call(_run_payload(cluster, cloudpickle.dumps(spec)))
    assert response["fatal"]["type"] == "IntegrityError" and name in response["fatal"]["message"]
    assert not os.path.exists(marker)
    cluster.store.delete([name])


# -- 3. references are verified before anything is read ------------------------------------------
def _raw_invoke(cluster, event) -> dict:
    response = cluster.invoker.client.invoke(
        FunctionName=cluster.function_name, Payload=json.dumps(event)
    )
    return json.loads(response["Payload"].read())


def _ref(cluster, key: str, data: bytes, bucket: str | None = None) -> dict:
    return {"bucket": bucket or cluster.bucket, "key": key, "size": len(data),
            "sha256": protocol.digest(data)}  # fmt: skip


def test_unsigned_reference_is_never_fetched(cluster):
    existing = f"{cluster.prefix}/{'a' * 16}/{'b' * 32}"
    data = protocol.encode_payload({"op": "ping"})
    cluster.store.put(existing, data)
    answers = [
        _raw_invoke(cluster, protocol.reference_envelope(_ref(cluster, key, data), key=None))
        for key in (existing, f"{cluster.prefix}/no/such/object")
    ]
    # the same refusal whether the object exists or not: no oracle, nothing read
    assert [a["errorType"] for a in answers] == ["SignatureError", "SignatureError"]
    assert answers[0]["errorMessage"] == answers[1]["errorMessage"]
    cluster.store.delete([existing])


def test_signed_references_are_checked_before_download(cluster, local):
    key = cluster.invoker.signing_key
    data = protocol.encode_payload({"op": "ping"})
    name = f"{cluster.prefix}/{'a' * 16}/payloads/{'c' * 32}"
    cluster.store.put(name, data)
    outside = unique("elsewhere")
    cluster.local.client("s3").create_bucket(Bucket=outside)
    too_big = {**_ref(cluster, name, data), "size": 10**12}
    cases = {
        "only from its own bucket": _ref(cluster, name, data, bucket=outside),
        "outside this function's prefix": _ref(cluster, "elsewhere/x", data),
        "over a quarter of this function's": too_big,
    }
    for expected, ref in cases.items():
        answer = _raw_invoke(cluster, protocol.reference_envelope(ref, key))
        assert answer["errorType"] == "ProtocolError" and expected in answer["errorMessage"]
    # the object grew after signing (an attacker's 20 MB): refused before its body is read
    cluster.store.client.put_object(Bucket=cluster.bucket, Key=name, Body=b"x" * 20_000_000)
    answer = _raw_invoke(cluster, protocol.reference_envelope(_ref(cluster, name, data), key))
    assert answer["errorType"] == "IntegrityError" and "It was not read" in answer["errorMessage"]
    # a well-formed, signed reference to the real bytes still works
    cluster.store.put(name, data)
    answer = _raw_invoke(cluster, protocol.reference_envelope(_ref(cluster, name, data), key))
    assert "payload" in answer
    cluster.store.delete([name])
    logs = cluster.local.client("logs").filter_log_events(
        logGroupName=f"/aws/lambda/{cluster.function_name}", filterPattern="refused"
    )
    assert sum("payload_ref" in e["message"] for e in logs["events"]) >= 2


@pytest.mark.parametrize(
    "ref",
    [None, "a string", {"bucket": 1, "key": "k"}, {"bucket": "b", "key": "k", "size": -1,
     "sha256": "0" * 64}, {"bucket": "b", "key": "k", "size": 1, "sha256": "zz"}],
)  # fmt: skip
def test_malformed_reference_is_a_logged_refusal(cluster, ref):
    event = {protocol.MARKER: protocol.PROTOCOL_VERSION, "payload_ref": ref, "expires": 1,
             "signature": "0" * 64}  # fmt: skip
    answer = _raw_invoke(cluster, event)
    assert answer["errorType"] == "ProtocolError" and "malformed payload_ref" in answer[
        "errorMessage"]  # fmt: skip


def test_spilled_requests_still_run(cluster):
    """A batch over Lambda's 6 MB goes through S3 by a signed, checked reference."""
    literal = dask.delayed(b"y" * 7_000_000, name="big-literal")
    with LambdaCluster(inline_limit=10**8) as big:  # the literal rides inside the request
        assert dask.delayed(len)(literal).compute(scheduler=big) == 7_000_000
        assert big.last_report.bytes_from_client >= 7_000_000
        assert spill_objects(big) == []


# -- 4, 5, 6. errors: always fit, keep their type and a traceback --------------------------------
def test_a_huge_error_message_keeps_its_type(cluster):
    with pytest.raises(ValueError, match=r"truncated: \d+ more characters") as info:
        dask.delayed(tasks.huge_message)(2_500_000).compute(scheduler=cluster)
    assert len(str(info.value)) < 10_000


def test_a_thousand_failing_tasks_fit_one_response():
    with LambdaCluster(max_concurrency=1) as single:
        failing = [dask.delayed(tasks.huge_message)(5000, i) for i in range(1000)]
        with pytest.raises(ValueError, match=r"\d+:mmm"):
            dask.compute(*failing, scheduler=single)
        assert single.last_report.invocations == 1  # one batch, one response that fit
        with LambdaExecutor(cluster=single) as ex:
            futures = [ex.submit(tasks.huge_message, 5000, i) for i in range(1000)]
            errors = [f.exception(timeout=120) for f in futures]
    assert all(type(e) is ValueError for e in errors), {type(e) for e in errors}
    assert str(errors[0]).startswith("0:m") and str(errors[-1]).startswith("999:m")


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("sys.exit(0)", SystemExit), ("SystemExit(3)", SystemExit),
     ("KeyboardInterrupt", KeyboardInterrupt), ("custom", tasks.CustomBaseException)],
)  # fmt: skip
def test_base_exceptions_are_the_tasks_errors(cluster, tmp_path, kind, expected):
    marker = str(tmp_path / "runs")
    with pytest.raises(expected) as info:
        dask.delayed(tasks.raise_base)(marker, kind).compute(scheduler=cluster)
    assert type(info.value).__name__ == expected.__name__
    assert not isinstance(info.value, LambdaFunctionError)
    if kind == "SystemExit(3)":
        assert info.value.code == 3
    assert Path(marker).read_text().count("ran") == 1  # not retried
    assert cluster.last_report.infra_retries == 0


def test_recursion_error_keeps_a_truncated_traceback(cluster):
    import traceback

    with pytest.raises(RecursionError) as info:
        dask.delayed(tasks.recurse)(0).compute(scheduler=cluster)
    frames = traceback.extract_tb(info.value.__traceback__)
    names = [f.name for f in frames]
    assert "recurse" in names and any("frames omitted" in n for n in names)
    assert len(frames) < 100


def test_exception_whose_str_raises_keeps_its_type(cluster):
    import traceback

    with pytest.raises(tasks.BadStr) as info:
        dask.delayed(tasks.fail_with_bad_str)(1).compute(scheduler=cluster)
    assert type(info.value).__name__ == "BadStr"
    assert "fail_with_bad_str" in [f.name for f in traceback.extract_tb(info.value.__traceback__)]


# -- 7. clean deletes only what dask-lambda wrote ------------------------------------------------
def test_clean_never_deletes_the_users_data(local, aws_env, bucket):
    from dask_lambda.function.storage import S3Store

    s3 = local.client("s3")
    users = ["dask-lambda/user-data.csv", "data/other.csv", f"dask-lambda/{'a' * 16}/{'b' * 32}",
             "data/notes/readme.txt"]  # fmt: skip
    for name in users:  # the last-but-one has our shape, but we never wrote it
        s3.put_object(Bucket=bucket, Key=name, Body=b"the user's")
    ours = [S3Store(bucket, s3).put(f"dask-lambda/{'c' * 16}/{i:032x}", b"spill").name
            for i in range(2)]  # fmt: skip
    ours.append(S3Store(bucket, s3).put(f"data/{'d' * 16}/payloads/{'e' * 32}", b"x").name)
    time.sleep(1.1)
    for prefix in ("data", "dask-lambda"):
        result = cli("clean", "--bucket", bucket, "--prefix", prefix, "--older-than", "1s", "--yes")
        for name in ours:
            if name.startswith(prefix + "/"):
                assert name in result.output  # listed before deleting
    left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert left == sorted(users)


def test_expiry_rule_spares_the_users_objects(local, aws_env, bucket, user_module):
    cli("deploy", unique("expiring"), str(user_module), "--create-role", "--bucket", bucket,
        "--prefix", "data", "--no-dependencies")  # fmt: skip
    rules = local.client("s3").get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    (rule,) = rules
    assert rule["Filter"]["And"]["Prefix"] == "data/"
    assert rule["Filter"]["And"]["Tags"] == [{"Key": "createdBy", "Value": "dask-lambda"},
                                             {"Key": "dask-lambda-lifetime", "Value": "scratch"}]


# -- 8. deploy never takes over what it did not create -------------------------------------------
THEIR_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::t/*"}],
}


def test_deploy_refuses_foreign_functions_and_roles(local, aws_env, bucket, deploy, user_module):
    lam, iam = local.client("lambda"), local.client("iam")
    foreign = deploy("behaviours.echo", Environment={"Variables": {"THEIRS": "1"}})
    before = lam.get_function_configuration(FunctionName=foreign)
    refused = cli("deploy", foreign, str(user_module), "--role", before["Role"], "--bucket",
                  bucket, "--memory", "2048", "--no-dependencies", ok=False)  # fmt: skip
    assert refused.exit_code == 1 and "not created by dask-lambda" in refused.output
    assert "--adopt" in refused.output
    after = lam.get_function_configuration(FunctionName=foreign)
    for field in ("CodeSha256", "MemorySize", "Timeout", "Environment", "Handler"):
        assert after[field] == before[field], field
    assert not any(p["Name"].startswith(f"/dask-lambda/{foreign}/")
                   for p in local.client("ssm").describe_parameters()["Parameters"])  # fmt: skip

    name = unique("rolled")
    iam.create_role(RoleName=f"dask-lambda-{name}", AssumeRolePolicyDocument="{}")
    iam.put_role_policy(
        RoleName=f"dask-lambda-{name}",
        PolicyName="dask-lambda",
        PolicyDocument=json.dumps(THEIR_POLICY),
    )
    refused = cli("deploy", name, "--create-role", "--bucket", bucket, "--no-dependencies",
                  ok=False)  # fmt: skip
    assert refused.exit_code == 1 and "was not created by dask-lambda" in refused.output
    policy = iam.get_role_policy(RoleName=f"dask-lambda-{name}", PolicyName="dask-lambda")
    assert policy["PolicyDocument"] == THEIR_POLICY

    adopted = cli("deploy", foreign, str(user_module), "--role", before["Role"], "--bucket",
                  bucket, "--no-dependencies", "--adopt")  # fmt: skip
    assert "Updated" in adopted.output
    tags = lam.list_tags(Resource=before["FunctionArn"])["Tags"]
    assert tags["createdBy"] == "dask-lambda"


# -- 9. a deployed folder never carries secrets --------------------------------------------------
def test_deploying_a_folder_leaves_secrets_out(local, aws_env, bucket, tmp_path):
    from dask_lambda.deploy.build import BuildSpec, build

    project = tmp_path / "project"
    files = {
        "work.py": "def f():\n    return 1\n", "pkg/__init__.py": "", "pkg/data.csv": "1,2\n",
        ".env": "SECRET=1", ".aws/credentials": "[default]\n", "id_rsa": "KEY", "cert.pem": "PEM",
        "pkg/credentials": "x", "venv/pyvenv.cfg": "home = /usr", "venv/lib/x.py": "",
        "__pycache__/work.cpython-311.pyc": "", ".git/config": "", "notes.tmp": "scratch",
    }  # fmt: skip
    for name, content in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(content)
    result = build(BuildSpec(paths=[project], with_dependencies=False, exclude=["*.tmp"]))
    names = set(zipfile.ZipFile(io.BytesIO(result.zip_bytes)).namelist())
    packed = {n for n in names if n.startswith("project/")}
    tag = sys.implementation.cache_tag
    # The user's own __pycache__ stays out; the build ships bytecode it compiled from the sources.
    assert packed == {"project/work.py", "project/pkg/__init__.py", "project/pkg/data.csv",
                      f"project/__pycache__/work.{tag}.pyc",
                      f"project/pkg/__pycache__/__init__.{tag}.pyc"}  # fmt: skip
    shipped = zipfile.ZipFile(io.BytesIO(result.zip_bytes)).read(
        f"project/__pycache__/work.{tag}.pyc"
    )
    assert shipped[16:] and shipped[8:16] == importlib.util.source_hash(files["work.py"].encode())
    summary = result.user_files.summary()
    for left_out in (".env", ".aws/", "id_rsa", "cert.pem", "venv/ (virtualenv)", ".git/",
                     "notes.tmp", "pkg/credentials"):  # fmt: skip
        assert left_out in summary, left_out
    output = cli("deploy", unique("folder"), str(project), "--create-role", "--bucket", bucket,
                 "--no-dependencies", "--exclude", "*.tmp").output  # fmt: skip
    assert "Your files: 3 packed" in output and "Left out" in output


# -- minor: prefixes that a policy would widen, and JSON too deep to parse -----------------------
@pytest.mark.parametrize("prefix", ["*", "spill/*", "a?b", "${aws:username}"])
def test_wildcard_prefixes_are_refused(aws_env, prefix):
    result = cli("deploy", "x", "--print-policy", "--bucket", "spill", "--prefix", prefix, ok=False)
    assert result.exit_code == 1 and "without *, ? or $" in result.output


def test_deeply_nested_json_is_a_bad_request(cluster):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        cluster.invoker.client.invoke(FunctionName=cluster.function_name,
                                      Payload=b"[" * 100_000 + b"]" * 100_000)  # fmt: skip
    assert info.value.response["Error"]["Code"] == "InvalidRequestContentException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# -- property: nothing is unpickled before verification, and the runtime survives ----------------
def test_runtime_survives_random_and_mutated_events(cluster, tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    marker = str(tmp_path / "pwned-by-mutation")
    key = cluster.invoker.signing_key
    attack = evil_pickle(marker)
    valid = protocol.envelope(protocol.encode_payload(_run_payload(cluster, attack)), key)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                     max_size=3),
        max_leaves=8,
    )  # fmt: skip
    fields = st.sampled_from(sorted(valid))
    mutated = st.one_of(
        st.builds(lambda f, v: {**valid, f: v}, fields, json_values),
        st.builds(lambda f: {k: v for k, v in valid.items() if k != f}, fields),
        st.builds(lambda i, b: {**valid, "payload": _flip(valid["payload"], i, b)},
                  st.integers(0, len(valid["payload"]) - 1), st.sampled_from("ABCxyz019+/")),
        st.builds(lambda ref: {**{k: v for k, v in valid.items() if k != "payload"},
                               "payload_ref": ref}, json_values),
        json_values,
    )  # fmt: skip
    runtimes_before = set(cluster.local.stats()["pids"])

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(mutated)
    def send(event):
        if event == valid:
            return
        answer = _raw_invoke(cluster, event)
        assert answer.get("errorType") in ("ProtocolError", "SignatureError"), answer

    send()
    assert not os.path.exists(marker)
    assert set(cluster.local.stats()["pids"]) >= runtimes_before  # no runtime died
    assert dask.delayed(tasks.inc)(1).compute(scheduler=cluster) == 2


def _flip(text: str, index: int, char: str) -> str:
    return text[:index] + char + text[index + 1 :]
