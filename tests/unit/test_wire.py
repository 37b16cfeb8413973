"""What the client reads off the wire, without a server: Lambda's error codes."""

from __future__ import annotations

import json

import pytest

from dask_lambda.attempts import retryable_service_error
from dask_lambda.remote.transport import _service_error


@pytest.mark.parametrize(
    ("headers", "body", "code"),
    [
        # AWS appends a documentation URL to the header after a colon (botocore strips it).
        ({"x-amzn-errortype": "TooManyRequestsException:http://internal.amazon.com/coral/"}, {},
         "TooManyRequestsException"),
        ({"x-amzn-errortype": "ServiceException:"}, {}, "ServiceException"),
        ({}, {"__type": "com.amazonaws.lambda#ResourceNotFoundException"},
         "ResourceNotFoundException"),
        ({}, {"code": "TooManyRequestsException:extra"}, "TooManyRequestsException"),
        ({}, {}, "429"),
    ],
)  # fmt: skip
def test_error_codes_are_parsed_as_botocore_parses_them(headers, body, code):
    error = _service_error(429, headers, json.dumps(body).encode(), "request-1")
    assert error.code == code
    assert retryable_service_error(error.code, 400) == code.startswith(("TooMany", "Service"))


def test_the_message_is_kept():
    body = json.dumps({"message": "Rate exceeded", "Type": "User"}).encode()
    error = _service_error(429, {"x-amzn-errortype": "TooManyRequestsException"}, body, None)
    assert (error.code, error.message, error.status) == (
        "TooManyRequestsException",
        "Rate exceeded",
        429,
    )
