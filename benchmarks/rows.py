"""A benchmark row of repeated timings, as every workload reports them."""

from __future__ import annotations

import statistics


def timing(times: list[float], **extra: object) -> dict:
    """The row of repeated timings: their median (what ratios compare), min and max."""
    ordered = sorted(times)
    return {"seconds": statistics.median(ordered), "min_seconds": ordered[0],
            "max_seconds": ordered[-1], "all_seconds": times, **extra}  # fmt: skip
