"""A client of the OCI distribution API (``/v2/``): what pushing and pulling an image needs.

Blobs are checked with ``HEAD`` before they are sent (a registry that holds one is never sent it
again), uploaded as docker does (``POST`` a session, ``PATCH`` the bytes streamed from the blob
store, ``PUT ?digest=``), and checked against their digest as they are pulled. Manifests are sent
and read as exact bytes, since their digest is what Lambda runs. Authentication is ECR's (HTTP
Basic with the token of ``ecr.get_authorization_token``) or a public registry's anonymous bearer
token (``public.ecr.aws``), asked for once per repository when the registry says so.

Written on urllib3 (botocore's HTTP library) rather than a registry library: oras-py retries any
error five times with sleeps of up to 83 s and sends every authenticated request (and its body)
twice, and python-dxf refuses credentials over plain HTTP, which a loopback registry speaks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import urllib.parse
from pathlib import Path

import urllib3

from ..aws import is_loopback
from .oci import INDEXES, MANIFESTS, ImageError, sha256_digest

ACCEPT_MANIFESTS = ", ".join([*MANIFESTS, *INDEXES])
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_CHUNK = 1 << 20


class RegistryError(ImageError):
    """A registry refused a request; the message has its status and error."""


class Registry:
    """One registry at ``url`` (``https://host`` or, for loopback, ``http://host:port``).

    Parameters
    ----------
    url
        Its base URL, or a bare host (HTTPS, or HTTP for a loopback address).
    authorization
        An ``Authorization`` header value for every request (ECR's ``Basic ...``), or None:
        anonymous, with a bearer token fetched when the registry asks for one.
    """

    def __init__(self, url: str, authorization: str | None = None, timeout: float = 60.0):
        if "://" not in url:
            url = ("http://" if is_loopback(f"//{url}") else "https://") + url
        self.url = url.rstrip("/")
        self.host = urllib.parse.urlsplit(self.url).netloc
        self.authorization = authorization
        self._tokens: dict[str, str] = {}
        self._http = urllib3.PoolManager(
            num_pools=4, maxsize=8, timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(502, 503, 504),
                                  raise_on_status=False),
        )  # fmt: skip

    # -- requests --------------------------------------------------------------------------------
    def _request(self, method: str, repository: str, path: str, expect: tuple[int, ...],
                 body=None, headers: dict | None = None, stream: bool = False):  # fmt: skip
        if path.startswith(("http://", "https://")):
            url = path
        elif path.startswith("/"):  # a Location relative to the registry
            url = self.url + path
        else:
            url = f"{self.url}/v2/{repository}/{path}"
        for attempt in range(2):
            sent = dict(headers or {})
            auth = self.authorization or self._tokens.get(repository)
            if auth:
                sent["Authorization"] = auth
            try:
                response = self._http.request(
                    method, url, body=body, headers=sent, preload_content=not stream
                )
            except urllib3.exceptions.HTTPError as e:
                raise RegistryError(f"Cannot reach the registry at {self.url}: {e}") from e
            if (
                response.status == 401
                and attempt == 0
                and self._anonymous_token(repository, response)
            ):
                if hasattr(body, "seek"):
                    body.seek(0)
                continue
            break
        if response.status not in expect:
            detail = response.data[:500].decode(errors="replace") if not stream else ""
            try:
                errors = json.loads(detail).get("errors") or []
                detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
            except ValueError:
                pass
            raise RegistryError(
                f"{method} {url} answered {response.status}"
                + (f" ({detail})" if detail else "")
                + (": check that the registry's credentials are current" if response.status in
                   (401, 403) else "")
            )  # fmt: skip
        return response

    def _anonymous_token(self, repository: str, response) -> bool:
        """Fetch the bearer token a public registry asks for; True if there is one to retry."""
        challenge = response.headers.get("WWW-Authenticate", "")
        if self.authorization or not challenge.lower().startswith("bearer"):
            return False
        fields = dict(_CHALLENGE.findall(challenge))
        query = {"service": fields.get("service", ""), "scope": f"repository:{repository}:pull"}
        answer = self._http.request("GET", fields["realm"] + "?" + urllib.parse.urlencode(query))
        if answer.status != 200:
            return False
        token = json.loads(answer.data)
        self._tokens[repository] = "Bearer " + (token.get("token") or token["access_token"])
        return True

    # -- manifests -------------------------------------------------------------------------------
    def manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest or index, by tag or digest."""
        response = self._request("GET", repository, f"manifests/{reference}", (200,),
                                 headers={"Accept": ACCEPT_MANIFESTS})  # fmt: skip
        data = response.data
        digest = sha256_digest(data)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"The manifest of {repository}@{reference} has digest {digest}")
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        return data, json.loads(data).get("mediaType") or media_type, digest

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """Store a manifest under a tag (or its digest); return its digest."""
        self._request("PUT", repository, f"manifests/{reference}", (200, 201), body=data,
                      headers={"Content-Type": media_type})  # fmt: skip
        return sha256_digest(data)

    # -- blobs -----------------------------------------------------------------------------------
    def has_blob(self, repository: str, digest: str) -> bool:
        response = self._request("HEAD", repository, f"blobs/{digest}", (200, 404))
        return response.status == 200

    def push_blob(self, repository: str, digest: str, source: Path | bytes,
                  check: bool = True) -> bool:  # fmt: skip
        """Upload a blob unless the repository holds it (``check``: ask first); True if it was
        sent."""
        if check and self.has_blob(repository, digest):
            return False
        started = self._request("POST", repository, "blobs/uploads/", (202,))
        location = started.headers["Location"]
        size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if isinstance(source, bytes):
            sent = self._request("PATCH", repository, location, (202,), body=source,
                                 headers=headers)  # fmt: skip
        else:
            with open(source, "rb") as data:
                sent = self._request("PATCH", repository, location, (202,), body=data,
                                     headers=headers)  # fmt: skip
        location = sent.headers.get("Location", location)
        separator = "&" if "?" in location else "?"
        self._request("PUT", repository, f"{location}{separator}digest={digest}", (201,),
                      headers={"Content-Length": "0"})  # fmt: skip
        return True

    def blob(self, repository: str, digest: str) -> bytes:
        data = self._request("GET", repository, f"blobs/{digest}", (200,)).data
        if sha256_digest(data) != digest:
            raise RegistryError(f"The blob {digest} of {repository} arrived with other content")
        return data

    def pull_blob(self, repository: str, digest: str, target: Path) -> Path:
        """Stream a blob to ``target`` (via a temporary file beside it), checking its digest."""
        response = self._request("GET", repository, f"blobs/{digest}", (200,), stream=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
        sha = hashlib.sha256()
        try:
            with partial.open("wb") as out:
                for chunk in response.stream(_CHUNK):
                    sha.update(chunk)
                    out.write(chunk)
            if "sha256:" + sha.hexdigest() != digest:
                raise RegistryError(f"The blob {digest} of {repository} arrived with other content")
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            response.release_conn()
        return target

    def close(self) -> None:
        self._http.clear()


def split_reference(reference: str) -> tuple[str, str, str]:
    """``(registry host, repository, tag or digest)`` of ``host/repo[:tag|@digest]``."""
    name, at, digest = reference.partition("@")
    host, _, path = name.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        raise ImageError(f"{reference!r} does not name its registry: write host/repository:tag")
    if at:
        return host, path, digest
    repository, colon, tag = path.rpartition(":")
    if not colon or "/" in tag:
        return host, path, "latest"
    return host, repository, tag
