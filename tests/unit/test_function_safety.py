"""What the function side refuses, checked in-process: the restricted unpickler's names and the
envelope's signature before anything is read. The same promises end to end: test_security.py."""

from __future__ import annotations

import importlib
import json
import pickle

import pytest
from conftest import DOTTED_ATTACKS, global_pickle

from dask_lambda.function import protocol
from dask_lambda.function.allowlist import RestrictedUnpickler
from dask_lambda.function.protocol import MARKER


@pytest.mark.parametrize(("module", "name"), DOTTED_ATTACKS)
def test_restricted_unpickler_refuses_dotted_and_foreign_names(tmp_path, monkeypatch, module, name):
    (tmp_path / "wild.py").write_text("import os\n\ndef double(x):\n    return 2 * x\n"
                                      "def _private():\n    pass\n"
                                      "class Tool:\n    def _run(self, *a):\n"
                                      "        pass\n")  # fmt: skip
    (tmp_path / "vetted.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "marker"
    attack = global_pickle(module, name, [("eval",), (f"open({str(marker)!r}, 'w')",)])
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        RestrictedUnpickler(attack, ["vetted.double", "wild.*"]).load()
    assert not marker.exists()
    wild = importlib.import_module("wild")
    allowed = RestrictedUnpickler(pickle.dumps(wild.double), ["wild.*"]).load()
    assert allowed(4) == 8


def _flip(text: str, index: int, char: str) -> str:
    return text[:index] + char + text[index + 1 :]


def test_open_envelope_reads_nothing_before_verification():
    """In-process property: over random and mutated documents, ``fetch`` runs only for events
    whose signature is valid, and every failure is a ProtocolError."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    key = b"k" * 32
    data = protocol.encode_payload({"op": "ping"})
    ref = {"bucket": "b", "key": "p/x", "size": len(data), "sha256": protocol.digest(data)}
    valid = [protocol.envelope(data, key), protocol.reference_envelope(ref, key)]
    fetched = []

    def fetch(r):
        fetched.append(r)
        return data

    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    values = st.recursive(
        leaves,
        lambda i: st.lists(i, max_size=3) | st.dictionaries(st.text(max_size=10), i, max_size=4),
        max_leaves=10,
    )

    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(st.sampled_from(valid), st.sampled_from(["payload", "payload_ref", "expires",
           "signature", "dask_lambda", "extra"]), values)  # fmt: skip
    def check(document, field, value):
        event = {**document, field: value}
        signed = all(event.get(f) == document[f] for f in ("signature", "expires", MARKER))
        fetched.clear()
        try:
            payload = protocol.open_envelope(json.dumps(event), fetch=fetch, key=key)
        except protocol.ProtocolError:
            payload = None
        if fetched:  # something was read: only ever for the signed reference itself
            assert signed and event["payload_ref"] == ref and "payload" not in event
        if payload is not None:
            assert signed and payload == {"op": "ping"}

    check()
    with pytest.raises(protocol.SignatureError):
        protocol.open_envelope({**valid[1], "payload_ref": {**ref, "key": "p/y"}}, fetch, key)
