"""CloudWatch Logs ``FilterLogEvents`` over the runtime logs the embedded local Lambda keeps.

Lambda sends each function's output to the log group ``/aws/lambda/<name>``, one stream per
execution environment; here each runtime process is one stream. Filter patterns are matched the
simple way: every term must appear in the message (quoted phrases count as one term).
"""

from __future__ import annotations

import json
import shlex

from .invoke import Response

PAGE_SIZE = 10_000


def json_error(code: str, message: str, status: int = 400) -> Response:
    """An error of an AWS JSON-protocol service (Logs, SSM, ...), as botocore reads it."""
    body = json.dumps({"__type": code, "message": message}).encode()
    return status, {"Content-Type": "application/x-amz-json-1.1"}, body


def filter_log_events(lines: list[tuple[int, str, str, int]], request: dict) -> Response:
    """Answer ``FilterLogEvents`` from ``(timestamp_ms, stream, message, sequence)`` lines."""
    start = request.get("startTime", 0)
    end = request.get("endTime", 2**63)
    streams = set(request.get("logStreamNames") or [])
    try:
        terms = shlex.split(request.get("filterPattern") or "")
    except ValueError:
        terms = [request.get("filterPattern")]
    matching = [
        line
        for line in lines
        if start <= line[0] <= end
        and (not streams or line[1] in streams)
        and all(term in line[2] for term in terms)
    ]
    offset = int(request.get("nextToken") or 0)
    limit = min(int(request.get("limit") or PAGE_SIZE), PAGE_SIZE)
    page = matching[offset : offset + limit]
    body = {
        "events": [
            {
                "logStreamName": stream,
                "timestamp": timestamp,
                "message": message,
                "ingestionTime": timestamp,
                "eventId": f"{sequence:020d}",
            }
            for timestamp, stream, message, sequence in page
        ],
        "searchedLogStreams": [
            {"logStreamName": s, "searchedCompletely": True}
            for s in sorted({line[1] for line in lines})
        ],
    }
    if offset + limit < len(matching):
        body["nextToken"] = str(offset + limit)
    return 200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(body).encode()
