"""The wire's payload bytes: compressed when that pays, and read back either way."""

from __future__ import annotations

import pytest

from dask_lambda.function import protocol


def test_a_large_repetitive_payload_is_compressed_and_reads_back():
    payload = {"op": "run", "keys": [f"('inc-8f3a2b1c9d0e', {i})" for i in range(1000)]}
    data = protocol.encode_payload(payload)
    import msgpack

    assert len(data) < len(msgpack.packb(payload, use_bin_type=True)) / 3
    assert protocol.decode_payload(data) == payload
    document = protocol.envelope(data, key=b"k" * 32)
    assert protocol.open_envelope(document, key=b"k" * 32) == payload  # signed as sent


def test_a_small_or_incompressible_payload_stays_msgpack():
    import os

    small = {"op": "ping"}
    assert protocol.decode_payload(protocol.encode_payload(small)) == small
    assert protocol.encode_payload(small)[:1] != b"\x78"
    noise = {"op": "run", "spec": os.urandom(50_000)}
    assert protocol.encode_payload(noise)[:1] != b"\x78"
    assert protocol.decode_payload(protocol.encode_payload(noise)) == noise


def test_a_corrupt_compressed_payload_is_a_protocol_error():
    with pytest.raises(protocol.ProtocolError, match="zlib"):
        protocol.decode_payload(b"\x78\x01garbage")


@pytest.mark.parametrize("tasks", [1, 63, 64, 65, 101, 1000, 1999])
def test_a_response_times_at_most_a_sample_of_its_tasks_at_their_own_indices(tasks):
    timings = [[i, i + 0.5, i] if i % 7 else None for i in range(tasks)]  # None: did not run
    step = protocol.timing_step(tasks)
    sampled = timings[::step]
    assert len(sampled) <= protocol.TIMING_SAMPLE and (step == 1) == (tasks <= 64)
    response = protocol.BatchResponse.from_payload(
        {"results": [], "errors": [], "timings": sampled, "timing_step": step}
    )
    assert len(response.timings) <= tasks  # never an index past the batch's last task
    for index, span in enumerate(response.timings):
        assert span == (timings[index] if index % step == 0 else None)


def test_an_old_response_without_a_step_is_timed_per_task():
    timings = [[0, 1, 2]] * 100
    response = protocol.BatchResponse.from_payload(
        {"results": [], "errors": [], "timings": timings}
    )
    assert response.timings == timings
