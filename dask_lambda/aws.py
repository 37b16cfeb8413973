"""boto3 sessions and clients from a profile, a region and an endpoint: one place for all of them.

With nothing given, boto3's own chains apply (``AWS_PROFILE``, ``AWS_REGION``, instance roles,
``AWS_ENDPOINT_URL_<SERVICE>``), so the same code reaches AWS or the embedded local Lambda.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Aws:
    """Where and as whom to call AWS.

    Parameters
    ----------
    profile, region, endpoint_url
        As for boto3; ``None`` defers to its configuration chain.
    credentials
        Explicit ``aws_access_key_id``/``aws_secret_access_key`` (the embedded local Lambda's).
    """

    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    credentials: dict[str, str] = field(default_factory=dict)
    _session: Any = field(default=None, repr=False)
    _clients: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def session(self):
        with self._lock:
            if self._session is None:
                import boto3

                # boto3 reads AWS_DEFAULT_REGION; other SDKs (and Lambda itself) set AWS_REGION.
                region = self.region or os.environ.get("AWS_REGION")
                self._session = boto3.session.Session(
                    profile_name=self.profile, region_name=region, **self.credentials
                )
            return self._session

    def client(self, service: str, config=None):
        """A boto3 client for ``service``, with deadlines on every call (``lambda.api-timeout``).

        ``config`` (a botocore ``Config``) overrides the defaults it names. Clients without one
        are made once and shared (boto3 clients are thread-safe).
        """
        if config is None:
            with self._lock:
                cached = self._clients.get(service)
            if cached is None:
                cached = self._make_client(service, None)
                with self._lock:
                    cached = self._clients.setdefault(service, cached)
            return cached
        return self._make_client(service, config)

    def _make_client(self, service: str, config):
        from botocore.config import Config

        from . import config as settings

        timeout = float(settings.setting("api-timeout"))
        defaults = Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "max_attempts": 5 if service == "s3" else 3},
            signature_version="s3v4" if service == "s3" else None,
        )
        merged = defaults.merge(config) if config is not None else defaults
        return self.session.client(service, endpoint_url=self.endpoint_url, config=merged)

    @property
    def region_name(self) -> str | None:
        return self.session.region_name


def is_loopback(url: str | None) -> bool:
    """True for an endpoint on this machine (``127.0.0.0/8``, ``::1``, ``localhost``): a local
    Lambda (``dask-lambda local``, the embedded one), never AWS."""
    import ipaddress
    import urllib.parse

    if not url:
        return False
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lambda_endpoint(endpoint_url: str | None) -> str | None:
    """The endpoint boto3 sends Lambda calls to, given ``endpoint_url`` or the environment."""
    return (
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_LAMBDA")
        or os.environ.get("AWS_ENDPOINT_URL")
    )


def signed_post(session: Any, url: str, body: bytes, region: str | None) -> bytes:
    """POST ``body`` to ``url`` signed (SigV4, service ``lambda``) with the session's
    credentials; the answer's body (``OSError`` / ``urllib.error.HTTPError`` on failure)."""
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method="POST", url=url, data=body)
    SigV4Auth(session.get_credentials().get_frozen_credentials(), "lambda",
              region or "us-east-1").add_auth(request)  # fmt: skip
    sent = urllib.request.Request(url, data=body, headers=dict(request.headers.items()),
                                  method="POST")  # fmt: skip
    with urllib.request.urlopen(sent, timeout=10) as response:
        return response.read()
