"""The local Lambda's internal endpoints, tried from inside a task as an attacker would, and a
local endpoint that is never taken for AWS (issue 23).

A task holds only its role's credentials. It must not be able to switch IAM off or read the
admin's key through moto's unauthenticated ``/moto-api``, read the local Lambda's own state, or
fail another runtime's invocation by posting to that runtime's Runtime API.
"""

from __future__ import annotations

import os

import dask
import tasks
from conftest import cli, unique, wait_until

from dask_lambda import LambdaCluster, LambdaExecutor


def _internal_routes() -> dict[str, object]:
    """What a task gets from the routes that are not AWS APIs, unsigned, as an attacker asks."""
    import os
    import urllib.error
    import urllib.request

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    answers: dict[str, object] = {}
    for method, path in [("POST", "/moto-api/reset-auth"), ("GET", "/moto-api/data.json"),
                         ("POST", "/moto-api/reset"), ("GET", "/_dask_lambda/stats"),
                         ("POST", "/_dask_lambda/faults")]:  # fmt: skip
        data = b"{}" if method == "POST" else None
        request = urllib.request.Request(endpoint + path, data=data, method=method,
                                         headers={"Content-Type": "text/plain"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answers[path] = response.read()[:200]
        except urllib.error.HTTPError as e:
            answers[path] = e.code
    return answers


def _write_outside_my_prefix(bucket: str) -> str:
    import boto3

    try:
        boto3.client("s3").put_object(Bucket=bucket, Key="not-mine/x", Body=b"x")
        return "written"
    except Exception as e:
        return e.response["Error"]["Code"]


def test_a_task_cannot_switch_iam_off_or_read_the_admins_key(cluster):
    answers = dask.delayed(_internal_routes)().compute(scheduler=cluster)
    assert answers == {path: 403 for path in answers}, answers
    # IAM still holds afterwards: the task's role may write only its own prefix
    outside = dask.delayed(_write_outside_my_prefix)(cluster.bucket).compute(scheduler=cluster)
    assert outside == "AccessDenied"
    assert isinstance(cluster.local.stats()["pids"], list)  # the admin still may


def _read_parameters(names: list[str]) -> list[str]:
    import boto3

    answers = []
    for name in names:
        try:
            boto3.client("ssm").get_parameter(Name=name, WithDecryption=True)
            answers.append("read")
        except Exception as e:  # as SSM answers: a JSON error boto3 reads the code of
            answers.append(e.response["Error"]["Code"])
    return answers


def test_a_task_reads_its_own_signing_key_and_no_other(cluster, local):
    """The role grants one SSM parameter by its ARN: the local Lambda checks SSM actions
    against the parameter named, as AWS does, not against ``*``."""
    from dask_lambda.function.contract import key_parameter_name

    other = key_parameter_name(unique("someone-else"))
    local.client("ssm").put_parameter(Name=other, Value="secret", Type="SecureString")
    own = key_parameter_name(cluster.function_name)
    read = dask.delayed(_read_parameters)([own, other]).compute(scheduler=cluster)
    assert read == ["read", "AccessDeniedException"], read


def _forge_init_errors() -> list[int]:
    """Post ``/runtime/init/error`` to every other listener on 127.0.0.1 (Runtime API ports are
    found in /proc/net/tcp, as an attacker would): the statuses that accepted it."""
    import http.client
    import os

    own = int(os.environ["AWS_LAMBDA_RUNTIME_API"].rsplit(":", 1)[1])
    endpoint = int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    ports = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and address == "0100007F":  # LISTEN on 127.0.0.1
                ports.add(int(port, 16))
    accepted = []
    body = b'{"errorMessage": "forged", "errorType": "Forged"}'
    for port in sorted(ports - {own, endpoint}):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("POST", "/2018-06-01/runtime/init/error", body=body)
            status = connection.getresponse().status
            if status == 202:
                accepted.append(port)
        except Exception:  # refused, closed unread, not HTTP
            pass
        finally:
            connection.close()
    return accepted


def test_a_task_cannot_fail_another_runtimes_invocation(cluster):
    with LambdaExecutor(cluster=cluster, max_workers=2) as ex:
        ex.submit(tasks.noop).result(timeout=120)  # one warm runtime; the next call starts another
        victim = ex.submit(tasks.slow, 42, 4)
        attacker = ex.submit(_forge_init_errors)
        assert attacker.result(timeout=120) == []
        assert victim.result(timeout=120) == 42


def test_a_local_endpoint_is_not_taken_for_aws(local, aws_env, bucket):
    """`dask-lambda local`'s exports set, a named function: the cluster knows it is local."""
    name = unique("on-local")
    cli("deploy", name, "--create-role", "--bucket", bucket)
    with LambdaCluster(function_name=name) as cluster:
        assert f"local Lambda at {local.endpoint_url}" in repr(cluster)
        assert cluster.settings.max_concurrency == max(2, os.cpu_count() or 2)  # not AWS's 100
        assert dask.compute(*[dask.delayed(tasks.inc)(i) for i in range(4)],
                            scheduler=cluster) == (1, 2, 3, 4)  # fmt: skip
        assert "if run on AWS (an estimate" in cluster.last_report.summary()
        assert local.stats()["functions"].get(name, 0) >= 1
    assert wait_until(lambda: local.stats()["functions"].get(name, 0) == 0)  # reaped on close


def test_a_compute_on_client_paths_fails_before_it_runs(cluster, tmp_path, monkeypatch):
    """A public notebook's `b.to_textfiles('data/*.json')`: fsspec made the path absolute on the
    client, so in Lambda it would name the function's own disk. Refused, naming the path."""
    import dask.bag as db
    import dask.dataframe as dd
    import pandas as pd
    import pytest

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("a\n1\n2\n")
    frame = dd.from_pandas(pd.DataFrame({"a": range(10)}), npartitions=2)
    before = cluster.invoker.stats.invocations
    attempts = {
        "to_textfiles": lambda: db.from_sequence(range(10), npartitions=2).map(str)
        .to_textfiles("data/*.json", scheduler=cluster),
        "read_text": lambda: db.read_text("in.csv").count().compute(scheduler=cluster),
        "read_csv": lambda: dd.read_csv("in.csv").a.sum().compute(scheduler=cluster),
        "to_parquet": lambda: frame.to_parquet("out.parquet",
                                               compute_kwargs={"scheduler": cluster}),
        "memory": lambda: db.read_text("memory://x.txt").count().compute(scheduler=cluster),
    }  # fmt: skip
    for name, attempt in attempts.items():
        with pytest.raises(ValueError, match="this machine's filesystem") as info:
            attempt()
        assert "s3://" in str(info.value) and "allow-local-paths" in str(info.value), name
    assert str(tmp_path / "data") in _message(attempts["to_textfiles"])
    assert cluster.invoker.stats.invocations == before  # nothing ran
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def _message(attempt) -> str:
    try:
        attempt()
    except ValueError as e:
        return str(e)
    return ""


def _what_a_task_sees(client_pid: int, client_cwd: str, client_secret_file: str) -> dict:
    import os

    try:
        os.kill(client_pid, 0)
        signalled = True
    except OSError:
        signalled = False
    try:
        with open(f"/proc/{client_pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        environ = None
    return {
        "root": sorted(os.listdir("/")),
        "cwd": os.getcwd(),
        "client_cwd": os.path.exists(client_cwd),
        "client_tmp_file": os.path.exists(client_secret_file),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "signalled": signalled,
        "environ": environ,
        "task_root_writable": os.access("/var/task", os.W_OK),
        "tmp_writable": os.access("/tmp", os.W_OK),
    }


def test_a_task_sees_only_its_own_files_and_processes(cluster, monkeypatch):
    """As on AWS: no client home, working directory or /tmp, no client process to read or
    signal; its code read-only at /var/task, its own writable /tmp."""
    import tempfile

    monkeypatch.setenv("CLIENT_SECRET", "s3cr3t")
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="client-") as secret:
        seen = dask.delayed(_what_a_task_sees)(os.getpid(), os.getcwd(),
                                               secret.name).compute(scheduler=cluster)  # fmt: skip
    assert seen["cwd"] == "/var/task"
    assert not seen["client_cwd"] and not seen["client_tmp_file"]
    assert not {"home", "work"} & set(seen["root"])
    assert os.getpid() not in seen["pids"] and max(seen["pids"]) < 10  # its own PID namespace
    assert not seen["signalled"] and seen["environ"] is None
    assert not seen["task_root_writable"] and seen["tmp_writable"]


def test_partial_isolation_is_said_at_start(monkeypatch):
    """Without a sandbox (no bubblewrap, or switched off) the local Lambda says so, once."""
    import pytest

    from dask_lambda.emulator import LocalLambda

    monkeypatch.setenv("DASK_LAMBDA__LOCAL__ISOLATION", "none")
    with pytest.warns(RuntimeWarning, match="without a sandbox .*lambda.local.isolation: none"):
        LocalLambda().start().close()


def _privileges_a_task_tries() -> dict:
    """What an attacker inside a task tries to leave the sandbox: a device node for the
    machine's disk (to mount it and read the client's files), a mount, raw packets."""
    import ctypes
    import os
    import socket
    import stat

    tried: dict = {}
    with open("/proc/self/status") as f:
        tried["CapEff"] = next(line.split()[1] for line in f if line.startswith("CapEff"))
    try:
        os.mknod("/tmp/disk", stat.S_IFBLK | 0o600, os.makedev(8, 0))
        tried["mknod"] = "made"
    except OSError as e:
        tried["mknod"] = e.errno
    libc = ctypes.CDLL(None, use_errno=True)
    os.makedirs("/tmp/mnt", exist_ok=True)
    tried["mount"] = libc.mount(b"none", b"/tmp/mnt", b"tmpfs", 0, None) or "mounted"
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
        tried["raw_socket"] = "opened"
    except OSError as e:
        tried["raw_socket"] = e.errno
    return tried


def test_a_task_has_no_privileges_to_leave_its_sandbox(cluster):
    """As on AWS, where a function runs as an unprivileged user: the local Lambda's server
    runs as root here, yet its tasks hold no capability, so none can make a device node for
    this machine's disk, mount it, or sniff the network."""
    import errno

    tried = dask.delayed(_privileges_a_task_tries)().compute(scheduler=cluster)
    assert tried["CapEff"] == "0000000000000000", tried
    assert tried["mknod"] == errno.EPERM and tried["mount"] == -1, tried
    assert tried["raw_socket"] == errno.EPERM, tried
