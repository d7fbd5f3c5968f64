"""The run's PNG: throughput, latency and consumer lag over time (matplotlib, Agg backend).

Three panels sharing the time axis (seconds since the first send): bookings sent and sagas
completed per second; end-to-end latency p50/p99 of the sagas completed in each second; the
largest consumer lag sampled in each second.
"""

from __future__ import annotations

from pathlib import Path

from loadgen.report import Report


def write_plot(report: Report, path: Path) -> Path:
    """Draw ``report`` into ``path`` (PNG); returns the path."""
    # Agg renders without a display; chosen here, not at import, so importing is side-effect
    # free and nothing else in the process has its backend changed behind its back.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.series
    t = [r.t_s for r in rows]
    fig, (ax_rate, ax_latency, ax_lag) = plt.subplots(
        3, 1, figsize=(10, 9), sharex=True, constrained_layout=True
    )
    run = report.run
    target = "max" if run["max_rate"] else f"{run['target_rate_per_s']:g}/s"
    fig.suptitle(
        f"erynoa loadgen {run['run_id']}: via {run['via']}, profile {run['profile']}, "
        f"target {target}, {run['accepted']} bookings"
    )

    ax_rate.plot(t, [r.sent for r in rows], label="sent /s", drawstyle="steps-post")
    ax_rate.plot(t, [r.completed for r in rows], label="completed /s", drawstyle="steps-post")
    ax_rate.set_ylabel("bookings per second")
    ax_rate.legend(loc="upper right")
    ax_rate.grid(alpha=0.3)

    done = [r for r in rows if r.completed > 0]
    ax_latency.plot([r.t_s for r in done], [r.p50_ms for r in done], ".-", label="p50")
    ax_latency.plot([r.t_s for r in done], [r.p99_ms for r in done], ".-", label="p99")
    ax_latency.set_ylabel("end to end (ms)")
    if done and max(r.p99_ms for r in done) > 20 * max(min(r.p50_ms for r in done), 1):
        ax_latency.set_yscale("log")
    ax_latency.legend(loc="upper right")
    ax_latency.grid(alpha=0.3)

    sampled = [(r.t_s, r.max_lag) for r in rows if r.max_lag is not None]
    ax_lag.plot([t for t, _ in sampled], [lag for _, lag in sampled], ".-", color="tab:red")
    ax_lag.set_ylabel("max consumer lag (messages)")
    ax_lag.set_xlabel("seconds since the first booking was sent")
    ax_lag.grid(alpha=0.3)

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
