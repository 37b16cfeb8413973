"""The registry client trusts no registry: what it pulls by digest must have that digest.

A registry (or a mirror, or anything between) that answers with other bytes is played here by a
small HTTP server on 127.0.0.1 that serves a tampered body for every request.
"""

from __future__ import annotations

import http.server
import threading

import pytest

from dask_lambda.deploy.oci import OCI_MANIFEST, sha256_digest
from dask_lambda.deploy.registry import Registry, RegistryError

GENUINE = b'{"schemaVersion": 2, "layers": []}'
TAMPERED = b'{"schemaVersion": 2, "layers": [{"digest": "sha256:evil"}]}'


class _Tampering(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", OCI_MANIFEST)
        self.send_header("Content-Length", str(len(TAMPERED)))
        self.end_headers()
        self.wfile.write(TAMPERED)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def tampering_registry():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Tampering)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    registry = Registry(f"127.0.0.1:{server.server_address[1]}")  # loopback: plain HTTP
    yield registry
    registry.close()
    server.shutdown()
    server.server_close()


def test_other_bytes_under_a_digest_are_refused_and_nothing_is_kept(tampering_registry, tmp_path):
    digest = sha256_digest(GENUINE)
    with pytest.raises(RegistryError, match="arrived with other content"):
        tampering_registry.pull_blob("repo", digest, tmp_path / "blob")
    assert list(tmp_path.iterdir()) == []  # neither the blob nor a partial download
    with pytest.raises(RegistryError, match="arrived with other content"):
        tampering_registry.blob("repo", digest)
    with pytest.raises(RegistryError, match="has digest"):
        tampering_registry.manifest("repo", digest)


def test_a_bare_loopback_host_is_spoken_to_over_http_and_any_other_over_https():
    assert Registry("127.0.0.1:5000").url == "http://127.0.0.1:5000"
    assert Registry("localhost:5000").url == "http://localhost:5000"
    assert Registry("123456789012.dkr.ecr.us-east-1.amazonaws.com").url.startswith("https://")
    assert Registry("public.ecr.aws").url == "https://public.ecr.aws"
