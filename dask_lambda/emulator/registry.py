"""The local Lambda's container registry: a real OCI distribution registry behind moto's ECR.

Image functions need a registry to push to and pull from, as on AWS. This one is the CNCF
distribution registry (``docker-registry``, from the distribution's packages: Debian's
``docker-registry``), started on a loopback port the first time an image is pushed or pulled
and stopped with the server. The front door (``/v2/`` on the local Lambda's endpoint) stands
before it as ECR's does:

- ECR repositories are moto's (``CreateRepository``, tags, ``DescribeImages``): a repository
  moto does not know is ``NAME_UNKNOWN`` here, and a pushed manifest is registered in moto's ECR
  (``PutImage``) so that ``BatchGetImage`` and ``CreateFunction`` with ``PackageType=Image`` see
  it; ``DeleteRepository`` deletes its manifests here too.
- Every request to an ECR repository carries ``Authorization: Basic`` with a token minted by
  ``GetAuthorizationToken`` (moto's are one fixed string per account, so this server answers
  that call with tokens of its own, valid 12 hours, and its own endpoint as ``proxyEndpoint``).
- ``public.ecr.aws/...`` is the second registry path: the public gallery's stand-in, pull-only
  and anonymous as the gallery is (a ``Bearer`` challenge sends a client for an anonymous
  token first, as ``public.ecr.aws`` does, so every build pulls its base as it would from AWS).
  It serves the stand-in base image
  ``public.ecr.aws/lambda/python:3.X`` (:func:`standin_base`): the managed-runtime stand-in as
  ``/var/runtime``, AWS's ``/lambda-entrypoint.sh`` and ``/var/runtime/bootstrap``, and this
  machine's interpreter as ``/var/lang/bin/python3``, as an image index with one platform.

The registry's own counters (its Prometheus metrics) say what was pushed and pulled:
:meth:`LocalRegistry.counters`, and ``/_dask_lambda/registry`` on the endpoint.
"""

from __future__ import annotations

import base64
import ctypes
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..deploy import oci
from ..deploy.registry import Registry
from .invoke import Response

PUBLIC_PREFIX = "public.ecr.aws/"
STANDIN_REPOSITORY = "public.ecr.aws/lambda/python"
TOKEN_SECONDS = 12 * 3600
PUBLIC_TOKEN_PATH = "/v2/token"  # where the gallery's challenge sends anonymous clients
_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>manifests|blobs|tags)(?P<rest>/.*)?$")
_HOP_BY_HOP = {"connection", "transfer-encoding", "keep-alive", "content-length", "host"}
_METRIC = re.compile(r"^registry_http_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M)

ENTRYPOINT_SH = b"""#!/bin/sh
# As AWS's base images start a function: the handler is the one argument.
if [ $# -ne 1 ]; then
  echo "entrypoint requires the handler name to be the first argument" 1>&2
  exit 142
fi
export _HANDLER="$1"
exec /var/runtime/bootstrap
"""
BOOTSTRAP_SH = b"""#!/bin/sh
# The python runtime's bootstrap: the function's code first, then the runtime's own packages.
export PYTHONPATH="/var/task:/opt/python:/var/runtime${PYTHONPATH:+:$PYTHONPATH}"
exec /var/lang/bin/python3 -S -u -m awslambdaric "$_HANDLER"
"""


class RegistryUnavailable(RuntimeError):
    """The distribution registry is not installed here; the message says how to install it."""


def registry_binary() -> str | None:
    return shutil.which("docker-registry") or shutil.which("registry")


def _error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return status, {"Content-Type": "application/json", **(headers or {})}, body


class LocalRegistry:
    """The registry process, its front door, its tokens and its counters.

    Parameters
    ----------
    workdir
        Where the registry keeps its storage (the server's work folder: gone with it).
    ecr_backend
        ``() -> moto's ECR backend`` of the server's account and region.
    spawn
        Starts the process (the runtime manager's long-lived spawner, so that the registry
        dies with the server).
    endpoint_url, region, account
        The local Lambda's endpoint (the tokens' ``proxyEndpoint``), region and account.
    """

    def __init__(self, workdir: Path, ecr_backend, spawn, endpoint_url: str, region: str,
                 account: str):  # fmt: skip
        self.workdir = Path(workdir)
        self._ecr_backend = ecr_backend
        self._spawn = spawn
        self.endpoint_url, self.region, self.account = endpoint_url, region, account
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self.port = self.debug_port = 0
        self._tokens: dict[str, float] = {}
        self._public_tokens: dict[str, float] = {}
        self._seeded = False

    # -- the process ---------------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Start the registry (again, if it died: its storage is kept) and serve the stand-in
        base image from it."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            if not self._seeded:  # under the lock: no request sees the registry without it
                push_standin_base(Registry(f"http://127.0.0.1:{self.port}"))
                self._seeded = True

    def _start(self) -> None:
        binary = registry_binary()
        if binary is None:
            raise RegistryUnavailable(
                "The local Lambda runs container images from a local OCI registry, and the"
                " distribution registry is not installed: apt-get install docker-registry"
                " (Debian/Ubuntu), or put the `registry` binary of"
                " github.com/distribution/distribution on PATH."
            )
        self.port, self.debug_port = _free_port(), _free_port()
        root = self.workdir / "registry"
        (root / "data").mkdir(parents=True, exist_ok=True)
        config = root / "config.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(root / "data")},
                        "delete": {"enabled": True}, "cache": {"blobdescriptor": "inmemory"}},
            "http": {"addr": f"127.0.0.1:{self.port}", "relativeurls": True,
                     "secret": secrets.token_hex(16),
                     "debug": {"addr": f"127.0.0.1:{self.debug_port}",
                               "prometheus": {"enabled": True, "path": "/metrics"}}},
        }))  # fmt: skip
        log = (root / "registry.log").open("ab")
        self._proc = self._spawn(
            [binary, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log,
            stderr=log, preexec_fn=_die_with_parent,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                said = (root / "registry.log").read_text()[-1500:]
                raise RegistryUnavailable(f"The registry exited at start: {said}")
            try:
                if self._direct("GET", "/v2/")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RegistryUnavailable("The registry did not answer within 30 s")

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def _direct(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            connection.request(method, path, body=body or None, headers=headers or {})
            answer = connection.getresponse()
            return answer.status, dict(answer.getheaders()), answer.read()
        finally:
            connection.close()

    @property
    def internal_url(self) -> str:
        """The registry itself, for the server's own pulls (no front door, no tokens)."""
        self.ensure_started()
        return f"http://127.0.0.1:{self.port}"

    # -- tokens ----------------------------------------------------------------------------------
    def authorization_data(self, moto_answer: bytes) -> bytes:
        """moto's ``GetAuthorizationToken`` answer with tokens of this registry's."""
        answer = json.loads(moto_answer)
        for data in answer.get("authorizationData", []):
            password = secrets.token_urlsafe(24)
            expires = time.time() + TOKEN_SECONDS
            with self._lock:
                self._tokens[password] = expires
            data["authorizationToken"] = base64.b64encode(f"AWS:{password}".encode()).decode()
            data["expiresAt"] = expires
            data["proxyEndpoint"] = self.endpoint_url
        return json.dumps(answer).encode()

    def _public_token(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        with self._lock:
            return scheme.lower() == "bearer" and self._public_tokens.get(token, 0) > time.time()

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        with self._lock:
            return user == "AWS" and self._tokens.get(password, 0) > time.time()

    # -- the front door --------------------------------------------------------------------------
    def handle(self, environ: dict[str, Any], body: bytes) -> Response:
        """Answer a ``/v2/`` request as ECR (or the public gallery) would, then pass it on."""
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if path == PUBLIC_TOKEN_PATH:  # the public gallery's anonymous pull tokens
            token = secrets.token_urlsafe(24)
            with self._lock:
                self._public_tokens[token] = time.time() + TOKEN_SECONDS
            return 200, {"Content-Type": "application/json"}, json.dumps({"token": token}).encode()
        match = _PATH.match(path)
        name = match["name"] if match else None
        challenge = {"WWW-Authenticate": f'Basic realm="{self.endpoint_url}/",'
                                         'service="ecr.amazonaws.com"'}  # fmt: skip
        if name is not None and name.startswith(PUBLIC_PREFIX):
            if method not in ("GET", "HEAD"):
                return _error(405, "UNSUPPORTED", "The public gallery is pull-only")
            if not self._public_token(environ.get("HTTP_AUTHORIZATION", "")):
                bearer = {"WWW-Authenticate": f'Bearer realm="{self.endpoint_url}'
                          f'{PUBLIC_TOKEN_PATH}",service="public.ecr.aws",scope="aws"'}  # fmt: skip
                return _error(401, "UNAUTHORIZED", "authentication required", bearer)
        elif not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
            return _error(401, "UNAUTHORIZED", "authentication required: use a token of"
                          " ecr.get_authorization_token (user AWS)", challenge)  # fmt: skip
        elif name is not None and name not in self._ecr_backend().repositories:
            return _error(404, "NAME_UNKNOWN",
                          f"The repository with name '{name}' does not exist in the registry"
                          f" with id '{self.account}'")  # fmt: skip
        try:
            self.ensure_started()
        except RegistryUnavailable as e:
            return _error(503, "UNAVAILABLE", str(e))
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items()
                   if k.startswith("HTTP_") and k[5:].lower().replace("_", "-") not in
                   (*_HOP_BY_HOP, "authorization")}  # fmt: skip
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        query = environ.get("QUERY_STRING")
        status, answer_headers, answer = self._direct(
            method, path + (f"?{query}" if query else ""), body, headers
        )
        if (match and match["kind"] == "manifests" and method == "PUT" and status == 201
                and not name.startswith(PUBLIC_PREFIX)):  # fmt: skip
            reference = (match["rest"] or "/").lstrip("/")
            try:
                self._register(name, reference, body, headers.get("Content-Type"))
            except Exception as e:  # noqa: BLE001 - said to the client, which sees a failed push
                return _error(500, "UNKNOWN", f"ECR did not record the image: {e!r}")
        kept = {k: v for k, v in answer_headers.items() if k.lower() not in _HOP_BY_HOP}
        if method == "HEAD" and "Content-Length" in answer_headers:
            kept["Content-Length"] = answer_headers["Content-Length"]
        return status, kept, answer

    def _register(self, name: str, reference: str, manifest: bytes, media_type: str | None):
        """A pushed manifest, as ECR knows its images (moto's ``PutImage``)."""
        from moto.ecr.exceptions import ImageAlreadyExistsException

        digest = oci.sha256_digest(manifest)
        tag = None if reference.startswith("sha256:") else reference
        try:
            self._ecr_backend().put_image(
                repository_name=name, image_manifest=manifest.decode(), image_tag=tag,
                image_manifest_mediatype=media_type, digest=digest,
            )  # fmt: skip
        except ImageAlreadyExistsException:  # the same image pushed again: as ECR, no change
            pass

    def forget_repository(self, name: str, digests: list[str]) -> None:
        """Delete a deleted repository's manifests (its blobs go with the server's folder)."""
        if self._proc is None:
            return
        for digest in digests:
            self._direct("DELETE", f"/v2/{name}/manifests/{digest}")

    # -- counters --------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """What the registry counted: blob uploads and pulls, manifest pushes and pulls (all
        0 before it started)."""
        counts = dict.fromkeys(_COUNTERS.values(), 0)
        counts["running"] = int(self._proc is not None and self._proc.poll() is None)
        if not counts["running"]:
            return counts
        connection = http.client.HTTPConnection("127.0.0.1", self.debug_port, timeout=30)
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        for found in _METRIC.finditer(text):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', found["labels"]))
            key = _COUNTERS.get((labels.get("handler"), labels.get("method"), labels.get("code")))
            if key:
                counts[key] += int(float(found["value"]))
        return counts


# The registry's request counters (handler, method, status) that say what moved.
_COUNTERS = {
    ("blob_upload_chunk", "put", "201"): "blobs_pushed",
    ("blob", "get", "200"): "blobs_pulled",
    ("blob", "head", "200"): "blobs_found",
    ("manifest", "put", "201"): "manifests_pushed",
    ("manifest", "get", "200"): "manifests_pulled",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


# -- the stand-in base image ----------------------------------------------------------------------
def standin_reference(endpoint_url: str) -> str:
    """The stand-in base image on the local Lambda at ``endpoint_url``, as ``lambda.image.base``
    names it (``{python}``: the function's X.Y; only this machine's Python is served)."""
    return f"{endpoint_url.split('://', 1)[1]}/{STANDIN_REPOSITORY}:{{python}}"


def standin_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def push_standin_base(registry: Registry, architecture: str = "x86_64") -> str:
    """Build (once per machine: its layer is kept by what it is made of) and push the stand-in
    for AWS's ``public.ecr.aws/lambda/python:3.X`` base image; return its index's digest."""
    from .runtimes import managed_runtime

    runtime = managed_runtime()
    interpreter = os.path.realpath(sys.executable)
    recipe = {"standin": runtime.name, "installed": runtime.stat().st_mtime_ns,
              "python": interpreter, "bootstrap": BOOTSTRAP_SH.decode(), "layer": 1}  # fmt: skip
    layer, _ = oci.cached_layer(recipe, lambda: _standin_runtime_layer(runtime, interpreter))
    scripts = oci.write_layer(
        [(ENTRYPOINT_SH, "lambda-entrypoint.sh")], root="", comment="entry point",
        executables={"lambda-entrypoint.sh"},
    )  # fmt: skip
    scratch = oci.BaseImage("scratch", "", {"architecture": oci.PLATFORMS[architecture],
        "os": "linux", "config": {
            "Entrypoint": ["/lambda-entrypoint.sh"],
            "Env": ["LANG=en_US.UTF-8", "TZ=:/etc/localtime",
                    "PATH=/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
                    "LAMBDA_TASK_ROOT=/var/task", "LAMBDA_RUNTIME_DIR=/var/runtime"]},
    }, [])  # fmt: skip
    image = oci.compose(scratch, [layer, scripts], ["app.handler"], architecture)
    for blob in image.layers:
        registry.push_blob(STANDIN_REPOSITORY, blob.digest, blob.path)
    registry.push_blob(STANDIN_REPOSITORY, image.config_digest, image.config)
    digest = registry.put_manifest(STANDIN_REPOSITORY, image.digest, image.manifest,
                                   oci.OCI_MANIFEST)  # fmt: skip
    index = json.dumps({
        "schemaVersion": 2, "mediaType": oci.OCI_INDEX,
        "manifests": [{"mediaType": oci.OCI_MANIFEST, "digest": digest,
                       "size": len(image.manifest),
                       "platform": {"architecture": oci.PLATFORMS[architecture],
                                    "os": "linux"}}],
    }, sort_keys=True).encode()  # fmt: skip
    return registry.put_manifest(STANDIN_REPOSITORY, standin_tag(), index, oci.OCI_INDEX)


def _standin_runtime_layer(runtime: Path, interpreter: str) -> oci.Layer:
    """``/var/runtime`` (the managed-runtime stand-in and its bootstrap) and the interpreter as
    ``/var/lang/bin/python3``."""
    from ..deploy.bytecode import bytecode_entries

    files = [(path, f"runtime/{path.relative_to(runtime).as_posix()}")
             for path in sorted(runtime.rglob("*"))
             if path.is_file() and "__pycache__" not in path.parts]  # fmt: skip
    # Its bytecode as unchecked-hash pycs: the layer's fixed mtimes would make pip's stale, and
    # every cold start would compile awslambdaric and boto3 again on the read-only /var/runtime.
    files += bytecode_entries(files)
    return oci.write_layer(
        [*files, (BOOTSTRAP_SH, "runtime/bootstrap")], root="var", comment="managed runtime",
        symlinks={"lang/bin/python3": interpreter}, executables={"runtime/bootstrap"},
    )  # fmt: skip
