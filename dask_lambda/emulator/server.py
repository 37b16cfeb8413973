"""The embedded local Lambda's HTTP front door: moto for the control plane, our runtimes for Invoke.

One WSGI application on 127.0.0.1 answers every AWS API the product uses. Requests are routed by
the service named in their SigV4 ``Authorization`` header, as AWS's endpoints would be:

- ``lambda`` ``POST .../functions/{name}/invocations`` is answered by
  :class:`~dask_lambda.emulator.invoke.InvokeService`, which runs the function's deployed code in
  ``awslambdaric`` runtime processes (moto cannot run code without Docker);
- ``lambda`` ``CreateFunction``, ``UpdateFunctionCode`` and ``PublishLayerVersion`` pass through
  moto, and their zips are recorded in the :class:`~dask_lambda.emulator.code_store.CodeStore` on
  the way; every other write to a function drops its cached spec;
- everything else (S3, IAM, the rest of Lambda's API) is moto's public server app;
- ``/_dask_lambda/*`` (the local Lambda's stats, fault injection, reaping a function's idle
  runtimes) answers only requests signed with the admin's key, and moto's unauthenticated
  ``/moto-api`` (reset, reset-auth, data.json with every secret) is not served at all: a task,
  which holds only its role's credentials, can neither read the admin's key nor switch IAM off.

A function's :class:`~dask_lambda.emulator.runtimes.FunctionSpec` is read through moto's own
``GetFunction`` and ``GetFunctionConcurrency`` and cached until the next write to that function.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import io
import json
import logging
import os
import re
import socket
import tempfile
import threading
import urllib.parse
from http import HTTPStatus
from pathlib import Path
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder, run_wsgi_app

from . import iam, snapstart
from .code_store import CodeStore, InvalidCode, code_sha256
from .endpoint import DEFAULT_REGION, service_env
from .faults import FaultInjector
from .images import ImageRun, ImageStore, InvalidImage, parse_image_uri
from .invoke import InvokeService, Response, error_response
from .logs import filter_log_events, json_error
from .registry import LocalRegistry
from .runtimes import FunctionSpec, RuntimeManager

ADMIN_PREFIX = "/_dask_lambda/"  # the local Lambda's own routes: admin-signed requests only
MOTO_API_PREFIX = "/moto-api"  # moto's unauthenticated reset/data routes: not served
CODE_REQUEST_LIMIT = 69_905_067  # a 50 MB zip, base64-encoded, in a JSON request

_CREDENTIAL = re.compile(r"Credential=[^/]+/\d+/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request")
_FUNCTION_PATH = re.compile(r"^/(?P<api>[^/]+)/functions/(?P<name>[^/]+)(?P<rest>/.*)?$")
_LAYER_PUBLISH = re.compile(r"^/[^/]+/layers/[^/]+/versions/?$")


def qualifier_from(identifier: str) -> str | None:
    """The qualifier in ``name:qualifier`` or a qualified function ARN, or None."""
    identifier = urllib.parse.unquote(identifier)
    parts = identifier.split(":")
    if identifier.startswith("arn:"):
        return parts[7] if len(parts) > 7 else None
    if len(parts) >= 3 and parts[1] == "function":
        return parts[3] if len(parts) > 3 else None
    return parts[1] if len(parts) == 2 else None


def function_name_from(identifier: str) -> str:
    """The bare name from a name, ``name:qualifier``, or (partial) function ARN."""
    identifier = urllib.parse.unquote(identifier)
    if identifier.startswith("arn:"):
        return identifier.split(":")[6]
    parts = identifier.split(":")
    if len(parts) >= 3 and parts[1] == "function":  # "123456789012:function:name"
        return parts[2]
    return parts[0]


LISTEN_BACKLOG = 4096
# moto backends a new cluster calls first, loaded in the background at start (see _preload).
PRELOADED_SERVICES = ("s3", "lambda", "ssm")
log = logging.getLogger(__name__)
# moto's (IAM/STS-style) authorization error codes, as Lambda's and the JSON-protocol services'
# APIs name them.
AUTH_ERROR_CODES = {
    "AccessDenied": "AccessDeniedException",
    "SignatureDoesNotMatch": "InvalidSignatureException",
    "InvalidClientTokenId": "UnrecognizedClientException",
}


class _KeepAliveHandler(MotoRequestHandler):
    """Keeps connections alive between requests, as AWS's endpoints do.

    werkzeug's handler closes every connection (and lingers 10 ms on each to drain it): a client
    would pay a new TCP connection per call here and not on AWS. A request with a
    ``Content-Length`` body is read whole, answered with a ``Content-Length`` response, and the
    connection stays open; anything else (a chunked upload) is left to werkzeug, which closes.
    ``Expect: 100-continue`` was answered already, by ``http.server``'s request parsing.
    """

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass

    def run_wsgi(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return super().run_wsgi()
        self.environ = environ = self.make_environ()
        length = int(self.headers.get("Content-Length") or 0)
        environ["wsgi.input"] = io.BytesIO(self.rfile.read(length))
        answer: list = []

        def start_response(status: str, headers: list, exc_info: Any = None):
            answer[:] = [status, headers]
            return chunks.append

        chunks: list[bytes] = []
        try:
            result = self.server.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        except Exception:  # noqa: BLE001 - answered as werkzeug would: a 500, then close
            self.close_connection = True
            answer, chunks = ["500 INTERNAL SERVER ERROR", []], []
        status, headers = answer
        body = b"".join(chunks)
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        head = environ["REQUEST_METHOD"] == "HEAD"  # its Content-Length is the object's size
        for name, value in headers:
            if name.lower() in ("connection", "transfer-encoding"):
                continue
            if name.lower() != "content-length" or head:
                self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.wfile.flush()


@functools.cache  # once a process, however many servers it starts
def _share_one_botocore_session() -> None:
    """Have moto's ``Session().get_available_regions`` calls share one botocore session.

    moto's EC2 model (imported when something uses it: see :func:`_import_ssm_without_ec2`)
    asks a new session for its regions three times at import, each parsing botocore's EC2 model
    and endpoints again (0.6 s). One session keeps what its loader read. Only this server's
    process is changed.
    """
    from boto3.session import Session

    unshared = Session.get_available_regions
    shared = functools.cache(Session)

    def get_available_regions(self, service_name, partition_name="aws", allow_non_regional=False):
        return unshared(shared(), service_name, partition_name, allow_non_regional)

    Session.get_available_regions = get_available_regions


class _EC2BackendsOnFirstUse:
    """Stands in for ``moto.ec2.ec2_backends`` in moto's SSM model until SSM uses it."""

    def __getitem__(self, account_id: str) -> Any:
        from moto.ec2 import ec2_backends

        return ec2_backends[account_id]


@functools.cache
def _import_ssm_without_ec2() -> None:
    """Import moto's SSM model without importing all of moto's EC2 (0.59 s of this process's
    CPU on the path of every ``LambdaCluster()``'s start, against 4 ms for SSM itself).

    ``moto.ssm.models`` takes ``ec2_backends`` from ``moto.ec2`` at import and uses it only for
    Run Command targets and ``aws:ec2:image`` parameters. It is imported with a stand-in
    ``moto.ec2`` that gives it :class:`_EC2BackendsOnFirstUse`, which imports the real one on
    first use; the stand-in is gone before anything else can import ``moto.ec2``.
    """
    import sys
    import types

    if "moto.ssm.models" in sys.modules or "moto.ec2" in sys.modules:
        return
    stand_in = types.ModuleType("moto.ec2")
    stand_in.ec2_backends = _EC2BackendsOnFirstUse()  # type: ignore[attr-defined]
    sys.modules["moto.ec2"] = stand_in
    try:
        import moto.ssm.models  # noqa: F401
    finally:
        if sys.modules.get("moto.ec2") is stand_in:
            del sys.modules["moto.ec2"]


class _Dispatcher(DomainDispatcherApplication):
    """moto's dispatcher, remembering which backend serves a host: moto lists its package's
    folders on disk for every request to find out (a third of an S3 call's time)."""

    @functools.lru_cache(maxsize=1024)  # noqa: B019 (one dispatcher per server, kept for its life)
    def get_backend_for_host(self, host: str | None) -> Any:
        return super().get_backend_for_host(host)

    def preload(self, service: str, account: str, region: str) -> None:
        """Import ``service``'s moto backend, create its region's instance and its app, as its
        first request would (the import runs outside the dispatcher's lock, which every request
        takes)."""
        from moto import backends

        backend = self.get_backend_for_host(f"{service}.{region}.amazonaws.com")
        regions = backends.get_backend(backend)[account]
        regions[region if region in regions else "aws"]  # S3's and IAM's are global: "aws"
        with self.lock:
            if backend not in self.app_instances:
                self.app_instances[backend] = self.create_app(backend)


class LocalLambdaServer:
    """Everything of the embedded local Lambda that lives in the serving process.

    Parameters
    ----------
    port
        TCP port on 127.0.0.1; 0 picks a free one.
    workdir
        Where deployed code is unpacked; a temporary folder (removed on close) by default.
    concurrency_limit
        The account's concurrent executions (AWS's default is 1000).
    idle_timeout
        Seconds an idle runtime is kept warm.
    """

    def __init__(
        self,
        port: int = 0,
        workdir: str | Path | None = None,
        concurrency_limit: int = 1000,
        idle_timeout: float = 300.0,
        runtime_mode: str = "process",
        seed: int | None = None,
    ):
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="dask-lambda-local-")
        self.workdir = Path(workdir or self._tmp.name)
        self.moto = _Dispatcher(create_backend_app)
        self.code = CodeStore()
        self._server = make_server(
            "127.0.0.1", port, self._wsgi, threaded=True, request_handler=_KeepAliveHandler
        )
        # werkzeug listens with a backlog of 128: a client opening a connection per concurrent
        # invocation (thousands at once) would see SYNs dropped and retried a second later.
        self._server.socket.listen(LISTEN_BACKLOG)
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_port}"
        self.region = DEFAULT_REGION
        self.admin = iam.create_admin(self._unchecked_iam_call)
        iam.enforce()
        _share_one_botocore_session()
        _import_ssm_without_ec2()
        self.runtimes = RuntimeManager(
            service_env=self.service_env(),
            concurrency_limit=concurrency_limit,
            idle_timeout=idle_timeout,
            runtime_mode=runtime_mode,
            tmp_root=self.workdir / "tmp",
        )
        if runtime_mode == "thread":  # handlers run in this process: let their boto3 find us
            os.environ.update(self.service_env(self.admin))
        self.faults = FaultInjector(seed)
        self.invoker = InvokeService(self.runtimes, self.faults)
        os.environ["MOTO_LAMBDA_STUB_ECR"] = "false"  # an image function's image must exist
        self.registry = LocalRegistry(
            self.workdir, self._ecr_backend, self.runtimes.spawner.popen, self.endpoint_url,
            self.region, iam.ACCOUNT_ID,
        )  # fmt: skip
        self.images = ImageStore(lambda: self.registry.internal_url)
        self._specs: dict[tuple[str, str, str | None], FunctionSpec] = {}
        self.snapstart = snapstart.SnapStartTable()
        self._specs_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def service_env(self, credentials: iam.Credentials | None = None) -> dict[str, str]:
        """What boto3 (in any process) needs to reach this server as if it were AWS: endpoints,
        region and, if given, credentials (a runtime gets its role's, a client the admin's)."""
        return service_env(
            self.endpoint_url, self.region, credentials.env() if credentials else None
        )

    # -- lifecycle ------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> LocalLambdaServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="local-lambda")
        self._thread.start()
        threading.Thread(target=self._preload, daemon=True, name="local-lambda-preload").start()
        return self

    def _preload(self) -> None:
        """Load the backends a new cluster calls first while its client builds the code.

        moto imports a backend and builds its app at its first request, on the path of every
        ``LambdaCluster()``'s start. Loaded here they overlap with the client's build and first
        calls instead (start-up 1.55 s without, 1.47 s with; median of 5 fresh processes). A
        request that comes first only waits for the import under way, as it would have paid
        for it anyway.
        """
        for service in PRELOADED_SERVICES:
            try:
                self.moto.preload(service, iam.ACCOUNT_ID, self.region)
            except Exception:  # noqa: BLE001 (an optimisation: the first request loads it then)
                log.debug("preloading moto's %s backend failed", service, exc_info=True)

    def close(self) -> None:
        self.runtimes.close()
        self.registry.close()
        self._server.shutdown()
        self._server.server_close()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- routing --------------------------------------------------------------------------------
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith((ADMIN_PREFIX, MOTO_API_PREFIX)):
            body = _read_body(environ)
            if not iam.is_admin(environ, body, self.admin):  # a task must not switch IAM off
                status, headers, body = error_response(
                    403, "AccessDeniedException",
                    f"{path.split('/')[1]} answers only requests signed with the local"
                    " Lambda's admin key",
                )  # fmt: skip
            elif path.startswith(MOTO_API_PREFIX):
                status, headers, body = error_response(
                    404, "ResourceNotFoundException", "moto's /moto-api is not served here"
                )
            else:
                status, headers, body = self._admin(environ, body)
            start_response(_status_line(status), list(headers.items()))
            return [body]
        if path == "/v2" or path.startswith("/v2/"):  # the container registry (registry.py)
            status, headers, body = self.registry.handle(environ, _read_body(environ))
            start_response(_status_line(status), list(headers.items()))
            return [body]
        match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        service = match["service"] if match else None
        response = None
        if service == "lambda":
            response = self._lambda(environ, match["region"])
        elif service == "logs":
            response = self._logs(environ)
        elif service == "ecr":
            response = self._ecr(environ)
        elif service == "s3" and self.faults.s3_error():
            _read_body(environ)
            body = (
                b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
                b"<Message>We encountered an internal error. Please try again.</Message></Error>"
            )
            response = 500, {"Content-Type": "application/xml"}, body
        if response is not None:
            status, headers, body = response
            start_response(_status_line(status), list(headers.items()))
            return [body]
        if "HTTP_X_AMZ_TARGET" in environ:  # a JSON-protocol service: SSM, DynamoDB, ...
            status, headers, body = _json_auth_error(self._call_moto(environ, _read_body(environ)))
            start_response(_status_line(status), list(headers.items()))
            return [body]
        return self.moto(environ, start_response)

    def _admin(self, environ: dict[str, Any], body: bytes) -> Response:
        """Not an AWS API: the local Lambda's own state, for tests, benchmarks and the CLI."""
        route = environ["PATH_INFO"][len(ADMIN_PREFIX) :]
        if route == "stats":
            stats = {
                **self.runtimes.stats(),
                "functions": self.runtimes.by_function(),
                **self.invoker.counts,
                "pids": self.runtimes.pids(),
                "streams": self.runtimes.streams(),
                "faults": self.faults.describe(),
            }
            return 200, {"Content-Type": "application/json"}, json.dumps(stats).encode()
        if route == "faults" and environ["REQUEST_METHOD"] == "POST":
            request = json.loads(body or b"{}")
            try:
                self.faults.configure(request.pop("function", "*"), request)
            except ValueError as e:
                return error_response(400, "InvalidParameterValueException", str(e))
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps(self.faults.describe()).encode(),
            )
        if route == "registry":
            counts = self.registry.counters()
            return 200, {"Content-Type": "application/json"}, json.dumps(counts).encode()
        if route == "reap" and environ["REQUEST_METHOD"] == "POST":
            name = str(json.loads(body or b"{}").get("function", ""))
            stopped = self.runtimes.reap_function(name)
            return 200, {"Content-Type": "application/json"}, json.dumps(stopped).encode()
        return error_response(404, "ResourceNotFoundException", f"No admin route {route!r}")

    def _lambda(self, environ: dict[str, Any], region: str) -> Response | None:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        function = _FUNCTION_PATH.match(path)
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        qualifier = (query.get("Qualifier") or [None])[0]
        if function:
            qualifier = qualifier_from(function["name"]) or qualifier
        if function and function["rest"] == "/invocations" and method == "POST":
            name = function_name_from(function["name"])
            return self._invoke(environ, region, name, qualifier)
        rest = (function["rest"] or "").rstrip("/") if function else None
        if method == "GET":
            answer = self._call_moto(environ, b"") if path.startswith("/2015-03-31/") else None
        elif function is None and method == "POST" and re.fullmatch(r"/[^/]+/functions/?", path):
            answer = self._create(environ, region)
        elif function is None:
            answer = self._record_code(
                environ, region, lambda req: req.get("Content", {}), layer=True
            ) if method == "POST" and _LAYER_PUBLISH.match(path) else None  # fmt: skip
        else:
            name = function_name_from(function["name"])
            self._forget(region, name)
            if method == "PUT" and rest == "/code":
                answer = self._record_code(environ, region, lambda req: req)
            elif method == "PUT" and rest == "/configuration":
                answer = self._update_configuration(environ, region, name)
            elif method == "POST" and rest == "/versions":
                answer = self._publish_version(environ, region, name)
            elif method == "DELETE" and not rest:
                answer = self._call_moto(environ, _read_body(environ))
                if answer[0] < 300:
                    self.snapstart.forget(region, name, qualifier)
                    if qualifier is None:
                        self.runtimes.drop_snapshots(name)
            else:
                answer = None
        if answer is None or answer[0] >= 300:
            return answer
        status, headers, body = answer
        body = self.snapstart.rewrite(region, body, functools.partial(self._snapshot_state, region))
        headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        return status, headers, body

    def _create(self, environ: dict[str, Any], region: str) -> Response | None:
        body = _read_body(environ)
        try:  # parsed once: the body holds the base64 zip (_record_code answers one too large)
            request = json.loads(body or b"{}") if len(body) <= CODE_REQUEST_LIMIT else None
        except ValueError:
            request = None
        refused = snapstart.refusal(request) if isinstance(request, dict) else None
        if refused is not None:
            return refused
        answer = self._record_code(environ, region, lambda req: req.get("Code", {}), request)
        if answer is not None and answer[0] < 300:
            apply_on = (request.get("SnapStart") or {}).get("ApplyOn", "None")
            self.snapstart.set(region, request["FunctionName"], apply_on)
        return answer

    def _update_configuration(self, environ: dict[str, Any], region: str, name: str):
        try:
            request = json.loads(_read_body(environ) or b"{}")
        except ValueError:
            return None
        if not isinstance(request, dict) or "SnapStart" not in request and not (
            self.snapstart.applies(region, name)
        ):
            return None
        status, headers, current = self.moto_call(
            "lambda", region, "GET", f"/2015-03-31/functions/{name}/configuration"
        )
        if status != 200:
            return status, headers, current
        merged = {**json.loads(current), **request}
        if "SnapStart" not in request:
            merged["SnapStart"] = {"ApplyOn": "PublishedVersions"}
        refused = snapstart.refusal(merged)
        if refused is not None:
            return refused
        answer = self._call_moto(environ, _read_body(environ))
        if answer[0] < 300 and "SnapStart" in request:
            self.snapstart.set(region, name, request["SnapStart"].get("ApplyOn", "None"))
        return answer

    def _publish_version(self, environ: dict[str, Any], region: str, name: str) -> Response:
        """``PublishVersion``; a version of a function with SnapStart has its snapshot made now,
        in the background (the version is ``Pending`` until its init is done)."""
        answer = self._call_moto(environ, _read_body(environ))
        if answer[0] < 300 and self.snapstart.applies(region, name):
            version = str(json.loads(answer[2])["Version"])
            self.snapstart.published(region, name, version)
            spec = self._spec(region, name, version)
            if isinstance(spec, FunctionSpec):
                try:
                    self.runtimes.snapshot(spec)
                except ValueError:  # no sandbox: its runtimes run init, then "restore"
                    pass
        return answer

    def _snapshot_state(self, region: str, name: str, version: str) -> tuple[str, str | None]:
        spec = self._spec(region, name, version)
        if not isinstance(spec, FunctionSpec):
            return "Active", None
        return self.runtimes.snapshot_state(spec)

    def _ecr_backend(self) -> Any:
        from moto.ecr.models import ecr_backends

        return ecr_backends[iam.ACCOUNT_ID][self.region]

    def _ecr(self, environ: dict[str, Any]) -> Response | None:
        """ECR's API is moto's, but for the registry's tokens and a deleted repository's
        images (see :mod:`.registry`)."""
        action = environ.get("HTTP_X_AMZ_TARGET", "").rpartition(".")[2]
        if action not in ("GetAuthorizationToken", "DeleteRepository"):
            return None
        body = _read_body(environ)
        images: list[str] = []
        if action == "DeleteRepository":
            name = json.loads(body or b"{}").get("repositoryName", "")
            repository = self._ecr_backend().repositories.get(name)
            images = [image.image_digest for image in repository.images] if repository else []
        status, headers, out = _json_auth_error(self._call_moto(environ, body))
        if status >= 300:
            return status, headers, out
        headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        if action == "GetAuthorizationToken":
            return status, headers, self.registry.authorization_data(out)
        self.registry.forget_repository(name, images)
        return status, headers, out

    def _logs(self, environ: dict[str, Any]) -> Response | None:
        """CloudWatch Logs ``FilterLogEvents`` on a function's group, from the kept runtime logs."""
        if not environ.get("HTTP_X_AMZ_TARGET", "").endswith(".FilterLogEvents"):
            return None
        request = json.loads(_read_body(environ) or b"{}")
        group = request.get("logGroupName", "")
        if not group.startswith("/aws/lambda/"):
            return None
        arn = f"arn:aws:logs:{self.region}:{iam.ACCOUNT_ID}:log-group:{group}:*"
        denied = iam.authorize(environ, _read_body(environ), "FilterLogEvents", arn)
        if denied is not None:
            return json_error(*denied, status=400 if "Token" in denied[0] else 403)
        lines = self.runtimes.logs(group.removeprefix("/aws/lambda/"))
        if not lines:
            return json_error(
                "ResourceNotFoundException", "The specified log group does not exist."
            )
        return filter_log_events(lines, request)

    def _invoke(
        self, environ: dict[str, Any], region: str, name: str, qualifier: str | None = None
    ) -> Response:
        payload = _read_body(environ)
        arn = f"arn:aws:lambda:{region}:{iam.ACCOUNT_ID}:function:{name}"
        if qualifier is not None:
            arn += f":{qualifier}"
        denied = iam.authorize(environ, payload, "InvokeFunction", arn)  # signature, then IAM
        if denied is not None:
            code, message = denied
            return error_response(403, AUTH_ERROR_CODES.get(code, code), message)
        spec_or_error = self._spec(region, name, qualifier)
        if not isinstance(spec_or_error, FunctionSpec):
            return spec_or_error
        if spec_or_error.snapstart:
            state, reason = self.runtimes.snapshot_state(spec_or_error)
            if state != "Active":
                return error_response(
                    409, "ResourceConflictException",
                    "The operation cannot be performed at this time. The function is currently"
                    f" in the following state: {state}" + (f" ({reason.strip()[-500:]})"
                                                           if reason else ""),
                )  # fmt: skip
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        return self.invoker.handle(spec_or_error, headers, payload)

    def _record_code(
        self, environ: dict[str, Any], region: str, code_of, request: dict | None = None,
        layer: bool = False,
    ):  # fmt: skip
        body = _read_body(environ)
        if len(body) > CODE_REQUEST_LIMIT:
            return error_response(
                413,
                "RequestEntityTooLargeException",
                f"Request must be smaller than {CODE_REQUEST_LIMIT} bytes for this operation."
                " Upload larger zips to S3 and pass S3Bucket/S3Key.",
            )
        try:
            code = code_of(request if request is not None else json.loads(body or b"{}"))
            sha = self.code.add(base64.b64decode(code["ZipFile"])) if "ZipFile" in code else None
            if "ImageUri" in code:  # pulled and unpacked before the function is Active
                self.images.pull(*parse_image_uri(code["ImageUri"]))
        except (InvalidCode, InvalidImage) as e:
            return error_response(400, "InvalidParameterValueException", str(e))
        except (ValueError, TypeError, AttributeError):
            return None  # let moto answer the malformed request as AWS would
        status, headers, out = self._call_moto(environ, body)
        if status < 300:
            try:
                if sha is None and "S3Bucket" in code:
                    sha = self._fetch_s3_code(environ, region, code)
                if layer and sha:
                    self.code.add_layer(json.loads(out)["LayerVersionArn"], sha)
            except InvalidCode as e:
                return error_response(400, "InvalidParameterValueException", str(e))
        return status, headers, out

    def _fetch_s3_code(self, environ: dict[str, Any], region: str, code: dict) -> str | None:
        key = urllib.parse.quote(code["S3Key"])
        status, _, data = self.moto_call("s3", region, "GET", f"/{code['S3Bucket']}/{key}")
        return self.code.add(data) if status == 200 else None

    # -- moto -----------------------------------------------------------------------------------
    def _call_moto(self, environ: dict[str, Any], body: bytes) -> Response:
        environ = dict(environ)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        app_iter, status, headers = run_wsgi_app(self.moto, environ)
        out = b"".join(app_iter)
        return int(status.split()[0]), dict(headers.to_wsgi_list()), out

    def moto_call(
        self,
        service: str,
        region: str,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        credentials: iam.Credentials | None = None,
    ) -> Response:
        """Call moto's API in-process as the local admin (or ``credentials``)."""
        url = self.endpoint_url + path
        signed = iam.signed_headers(
            credentials or self.admin, service, region, method, url, body, headers
        )
        environ = EnvironBuilder(
            path=path, method=method, base_url=self.endpoint_url, headers=signed, data=body
        ).get_environ()
        return self._call_moto(environ, body)

    def _unchecked_iam_call(self, params: dict[str, str]) -> str:
        """An IAM API call before IAM is enforced (creating the admin)."""
        body = urllib.parse.urlencode({**params, "Version": "2010-05-08"}).encode()
        status, _, out = self.moto_call(
            "iam", self.region, "POST", "/", body,
            {"Content-Type": "application/x-www-form-urlencoded"},
            credentials=iam.Credentials("bootstrap", "bootstrap"),
        )  # fmt: skip
        if status >= 300:
            raise RuntimeError(f"moto refused {params['Action']}: {out[:500]!r}")
        return out.decode()

    def _forget(self, region: str, name: str) -> None:
        with self._specs_lock:
            for key in [key for key in self._specs if key[:2] == (region, name)]:
                del self._specs[key]

    def _spec(
        self, region: str, name: str, qualifier: str | None = None
    ) -> FunctionSpec | Response:
        """The spec of function ``name`` at ``qualifier`` (a version or an alias; None and
        ``$LATEST`` are the unpublished function)."""
        qualifier = None if qualifier in (None, "$LATEST") else qualifier
        with self._specs_lock:
            cached = self._specs.get((region, name, qualifier))
        if cached is not None:
            return cached
        query = f"?Qualifier={urllib.parse.quote(qualifier)}" if qualifier else ""
        status, headers, body = self.moto_call(
            "lambda", region, "GET", f"/2015-03-31/functions/{name}{query}"
        )
        if status != 200:
            return status, headers, body
        function = json.loads(body)
        config = function["Configuration"]
        _, _, concurrency = self.moto_call(
            "lambda", region, "GET", f"/2019-09-30/functions/{name}/concurrency"
        )
        reserved = json.loads(concurrency or b"{}").get("ReservedConcurrentExecutions")
        image = None
        if config.get("PackageType") == "Image":
            try:
                image = self._image_run(function)
            except (InvalidImage, ValueError) as e:
                return error_response(502, "ServiceException", f"{name}'s image: {e}")
            code_dir = Path(image.rootfs) / "var" / "task"
        else:
            code_dir = self.code.code_dir(config["CodeSha256"])
        if code_dir is None:
            return error_response(
                502,
                "ServiceException",
                f"The embedded local Lambda has no code recorded for {name}; deploy it again"
                " through this endpoint (CreateFunction or UpdateFunctionCode).",
            )
        layers = [layer["Arn"] for layer in config.get("Layers") or []]
        version = str(config.get("Version") or "$LATEST")
        spec = FunctionSpec(
            name=config["FunctionName"],
            arn=config["FunctionArn"],
            handler=image.command[0] if image and image.command else config.get("Handler", ""),
            memory_mb=int(config.get("MemorySize") or 128),
            timeout_s=float(config.get("Timeout") or 3),
            environment=dict((config.get("Environment") or {}).get("Variables") or {}),
            code_dir=str(code_dir),
            layer_dirs=self.code.layer_dirs(layers),
            reserved_concurrency=reserved,
            revision=code_sha256(
                json.dumps([config, reserved], sort_keys=True, default=str).encode()
            ),
            credentials=iam.assume_role(config["Role"], name, region).env(),
            ephemeral_mb=int((config.get("EphemeralStorage") or {}).get("Size") or 512),
            version=version,
            snapstart=self.snapstart.is_snapshotted(region, name, version),
            image=image,
        )
        with self._specs_lock:
            self._specs[(region, name, qualifier)] = spec
        return spec

    def _image_run(self, function: dict) -> ImageRun:
        """How an image function starts: its image, with ``ImageConfig``'s overrides."""
        image = self.images.pull(*parse_image_uri(function["Code"]["ImageUri"]))
        override = (function["Configuration"].get("ImageConfigResponse") or {}).get(
            "ImageConfig"
        ) or {}
        return dataclasses.replace(
            image,
            entrypoint=tuple(override.get("EntryPoint") or image.entrypoint),
            command=tuple(override.get("Command") or image.command),
            working_dir=override.get("WorkingDirectory") or image.working_dir,
        )


_XML_ERROR = re.compile(rb"<Code>(?P<code>[^<]+)</Code>\s*<Message>(?P<message>[^<]*)</Message>")


def _json_auth_error(response: Response) -> Response:
    """moto's authorization errors for a JSON-protocol service, as that service sends them.

    moto answers a denied, unsigned or badly signed request to any service in the query
    protocol's XML, which boto3 cannot read for SSM or DynamoDB (the error's code becomes
    ``"403"``); AWS sends ``{"__type": "AccessDeniedException", "message": ...}``.
    """
    status, headers, body = response
    match = _XML_ERROR.search(body) if status in (400, 403) and body.startswith(b"<?xml") else None
    if match is None:
        return response
    code = match["code"].decode()
    if code not in AUTH_ERROR_CODES:
        return response
    message = html.unescape(match["message"].decode())
    return json_error(AUTH_ERROR_CODES[code], message, status)


def _read_body(environ: dict[str, Any]) -> bytes:
    """The whole request body, also when it came chunked (botocore streams some uploads)."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):  # werkzeug decodes chunked bodies to EOF
        data = stream.read()
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = stream.read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(data)
    return data


def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"
