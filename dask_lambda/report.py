"""What one compute did, what it would cost on AWS, and a picture of it.

:class:`ComputeReport` is filled by the scheduler (``LambdaCluster.last_report``). Its billed
duration follows Lambda's rule — each invocation's handler time rounded up to the millisecond,
times the function's memory — and its cost uses the ``lambda.pricing`` settings (AWS's public
us-east-1 prices by default; set your region's). :meth:`ComputeReport.plot_timeline` draws every
invocation on the runtime that served it, cold starts marked, over the number of invocations in
flight.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import config

MiB = 1024 * 1024
# Counted by the invoker per compute, copied as they are.
_INVOCATION_COUNTERS = (
    "invocations", "infra_retries", "splits", "escalations", "task_retries", "throttles",
    "cold_starts",
)  # fmt: skip


@dataclass
class ComputeReport:
    """Counters, bytes, timings and cost of one compute.

    ``invocation_records`` holds one dict per invocation: client-side ``start``/``stop`` (epoch
    seconds), handler ``duration``, ``cold_start`` (and ``restored`` when that cold start was
    a SnapStart restore), ``runtime_id``, ``tasks``, ``attempt``,
    request/response bytes, ``peak_memory_mb``, ``task_seconds`` (the run time of all its
    tasks) and ``task_timings`` (``[start, stop, nbytes]``, seconds from the handler's start,
    of a sample of its tasks: see :meth:`task_timings`).
    """

    compute_id: str
    tasks: int = 0
    invocations: int = 0
    infra_retries: int = 0
    splits: int = 0
    escalations: int = 0
    task_retries: int = 0
    speculations: int = 0
    throttles: int = 0
    cold_starts: int = 0
    wall_time: float = 0.0
    # CPU seconds of the client's scheduling thread (planning and bookkeeping, not invocations),
    # of which dask's own graph work (__dask_graph__, convert_legacy_graph, order), which dask's
    # schedulers pay too
    scheduler_cpu_seconds: float = 0.0
    dask_graph_cpu_seconds: float = 0.0
    # CPU seconds the client's pool threads spent sending batches: pickling, encoding and
    # signing requests, decoding responses (waiting on Lambda costs no CPU)
    send_cpu_seconds: float = 0.0
    bytes_inline: int = 0
    bytes_spilled: int = 0
    bytes_to_client: int = 0
    bytes_from_client: int = 0
    s3_objects_left: int = 0
    bytes_persisted_held: int = 0  # by this cluster's persisted collections, after the compute
    failed: bool = False
    memory_mb: int = 0
    architecture: str = "x86_64"
    local: bool = False  # ran on a local Lambda: the cost is what AWS would bill
    invocation_records: list = field(default_factory=list, repr=False)

    @property
    def client_cpu_seconds(self) -> float:
        """All the client's CPU for this compute: scheduling thread and pool threads."""
        return self.scheduler_cpu_seconds + self.send_cpu_seconds

    def count_invocations(self, stats) -> None:
        """Add the counters of the compute's invocations (an :class:`~.invoker.InvokeStats`)."""
        for name in _INVOCATION_COUNTERS:
            setattr(self, name, getattr(stats, name))
        self.bytes_to_client += stats.response_bytes
        self.bytes_from_client += stats.request_bytes
        self.bytes_spilled += stats.spilled_request_bytes
        self.invocation_records = list(stats.records)

    @property
    def tasks_per_invocation(self) -> float:
        return self.tasks / self.invocations if self.invocations else 0.0

    @property
    def bytes_through_client(self) -> int:
        return self.bytes_to_client + self.bytes_from_client

    @property
    def billed_seconds(self) -> float:
        return sum(
            math.ceil((r.get("duration") or 0) * 1000) / 1000 for r in self.invocation_records
        )

    @property
    def billed_gb_seconds(self) -> float:
        return self.billed_seconds * self.memory_mb / 1024

    @property
    def cost_usd(self) -> float:
        """Estimated AWS cost: requests plus GB-seconds at ``lambda.pricing``."""
        pricing = config.setting("pricing")
        per_gb_second = float(pricing["gb-second"][self.architecture])
        return self.invocations * float(pricing["request"]) + self.billed_gb_seconds * (
            per_gb_second
        )

    def task_timings(self) -> list[tuple[float, float]]:
        """``(start, stop)`` of the tasks timed in full, epoch seconds (client clock,
        estimated): every task of a batch of up to 64, an evenly spread 64 of a larger one
        (:data:`~dask_lambda.function.protocol.TIMING_SAMPLE`)."""
        timings = []
        for record in self.invocation_records:
            handler_start = _handler_start(record)
            for span in record.get("task_timings") or []:
                if span:
                    timings.append((handler_start + span[0], handler_start + span[1]))
        return timings

    @property
    def task_seconds(self) -> float:
        """Seconds the tasks themselves ran, summed over every task and invocation (the rest
        of the billed time is loading, reading and writing values, and the handler)."""
        return sum(r.get("task_seconds") or 0.0 for r in self.invocation_records)

    @property
    def dependency_mounts(self) -> list[dict[str, Any]]:
        """What mounting the dependency archive (a function whose dependencies live in S3) cost
        each cold start of this compute: ``seconds`` in all, ``download_seconds`` (until the
        archive's last byte arrived, unpacking as it streamed in), ``extract_seconds`` (the
        unpacking left after that), ``bytes`` and whether it ``unpacked`` (else ``/tmp`` had it)."""
        return [r["dependencies"] for r in self.invocation_records if r.get("dependencies")]

    def summary(self) -> str:
        mounts = self.dependency_mounts
        mounted = (
            f" dependencies mounted on {len(mounts)} cold starts in"
            f" {max(m.get('seconds', 0.0) for m in mounts):.2f} s at most;"
            if mounts
            else ""
        )
        return (
            f"{self.tasks} tasks in {self.invocations} invocations"
            f" ({self.tasks_per_invocation:.1f} per invocation), {self.cold_starts} cold starts,"
            f" {self.infra_retries} infrastructure retries ({self.splits} by splitting),"
            f" {self.wall_time:.2f} s, client CPU {self.client_cpu_seconds:.2f} s (dask's graph"
            f" work {self.dask_graph_cpu_seconds:.2f} s);{mounted}"
            f" {self.bytes_spilled / MiB:.1f} MiB spilled, {self.bytes_inline / MiB:.2f} MiB"
            f" inline, {self.bytes_through_client / MiB:.2f} MiB through the client;"
            + (
                f" {self.billed_gb_seconds:.3f} GB-s, ~${self.cost_usd:.6f} if run on AWS"
                " (an estimate: this ran on a local Lambda)"
                if self.local
                else f" {self.billed_gb_seconds:.3f} GB-s billed, ~${self.cost_usd:.6f}"
            )
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            tasks_per_invocation=self.tasks_per_invocation,
            client_cpu_seconds=self.client_cpu_seconds,
            task_seconds=self.task_seconds,
            dependency_mounts=self.dependency_mounts,
            billed_gb_seconds=self.billed_gb_seconds,
            cost_usd=self.cost_usd,
        )
        return data

    def plot_timeline(self, path: str | Path) -> Path:
        """Write a PNG of the invocations per runtime over time, and the concurrency under it."""
        return plot_timeline(self.invocation_records, path, f"compute {self.compute_id}")


def plot_timeline(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Draw invocation ``records`` (see :class:`ComputeReport`) as a timeline PNG at ``path``.

    One row per runtime (execution environment), one bar per invocation labelled with its task
    count; cold starts are orange and marked ▶, retried invocations have a red edge. Below, the
    number of invocations in flight.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("The timeline needs matplotlib: pip install 'dask-lambda[plot]'") from e
    records = sorted(records, key=lambda r: r["start"])
    if not records:
        raise ValueError("No invocations to plot")
    origin = records[0]["start"]
    span = max(r["stop"] for r in records) - origin or 1.0
    runtimes: dict[str, int] = {}
    for record in records:
        runtimes.setdefault(record.get("runtime_id") or "?", len(runtimes))

    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(10, 2.5 + 0.35 * min(len(runtimes), 40)),
        gridspec_kw={"height_ratios": [3, 1]},
    )  # fmt: skip
    for record in records:
        row = runtimes[record.get("runtime_id") or "?"]
        start, width = record["start"] - origin, record["stop"] - record["start"]
        cold = bool(record.get("cold_start"))
        retried = record.get("attempt", 1) > 1
        top.barh(
            row,
            width,
            left=start,
            height=0.7,
            color="tab:orange" if cold else "tab:blue",
            edgecolor="tab:red" if retried else "white",
            linewidth=1.2 if retried else 0.6,
        )
        if cold:
            top.plot(start, row, marker=">", color="black", markersize=6)
        if width > 0.04 * span and record.get("tasks"):
            top.text(start + width / 2, row, str(record["tasks"]), ha="center", va="center",
                     fontsize=7, color="white")  # fmt: skip
    top.set_ylabel("runtime")
    top.set_yticks(range(len(runtimes)))
    top.set_yticklabels([str(i) for i in range(len(runtimes))], fontsize=7)
    cold_starts = sum(bool(r.get("cold_start")) for r in records)
    retries = sum(r.get("attempt", 1) > 1 for r in records)
    top.set_title(
        f"{title}: {len(records)} invocations (bars labelled with their tasks),"
        f" {cold_starts} cold starts (orange ▶), {retries} retried (red edge)",
        fontsize=9,
    )
    events = sorted([(r["start"] - origin, 1) for r in records] +
                    [(r["stop"] - origin, -1) for r in records])  # fmt: skip
    times, levels, level = [0.0], [0], 0
    for moment, change in events:
        level += change
        times.append(moment)
        levels.append(level)
    bottom.step(times, levels, where="post", color="tab:green")
    bottom.fill_between(times, levels, step="post", alpha=0.3, color="tab:green")
    bottom.set_ylabel("in flight")
    bottom.set_xlabel("seconds since the first invocation")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _handler_start(record: dict) -> float:
    """The handler's start on the client's clock: the network time split evenly."""
    round_trip = record["stop"] - record["start"]
    return record["start"] + max(0.0, round_trip - (record.get("duration") or 0)) / 2
