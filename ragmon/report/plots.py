"""Trend charts of the request log: latency percentiles, stage share and cost per hour by model.

The numbers come from the report's own SQL (ragmon.report.timeline), over the log or over a
load_records() DataFrame. Uses matplotlib's object API with the Agg canvas, not pyplot: no
display is needed and the caller's (a notebook's) backend is left as it is.
"""
from __future__ import annotations

from pathlib import Path


def frame_trends(df, bucket: str | None = None) -> dict | None:
    """timeline.trends() of a load_records() DataFrame."""
    from .analysis import stage_names
    from .summary import frame_rows, runner
    from .timeline import trends

    with frame_rows(df) as (con, inside, _):
        return trends(runner(con), inside, bucket, stage_names(df))


def log_trends(log_dir, hours: float | None, bucket: str | None = None, *,
               now: float | None = None) -> tuple[dict | None, dict]:
    """(timeline.trends() of the log's last `hours` hours, the read stats as a dict)."""
    from .reader import MAX_STAGE_NAMES
    from .summary import bounded_keys, log_rows, runner
    from .timeline import trends

    with log_rows(log_dir, hours, now=now) as (con, inside, stats):
        if con is None:
            return None, stats.as_dict()
        run = runner(con)
        keys = bounded_keys({k for (k,) in run(f"SELECT DISTINCT unnest(map_keys(stage_map)) "
                                           f"FROM all_rows WHERE {inside}")},
                        MAX_STAGE_NAMES, "stage", stats)
        data = trends(run, inside, bucket, keys)
        stats.records = data["requests"] if data else 0
        return data, stats.as_dict()


def trends_figure(df=None, *, bucket: str | None = None, slow_seconds: float | None = None,
                  title: str | None = None, trends: dict | None = None, size=(11, 10)):
    """A matplotlib Figure with three panels over time, of a load_records() DataFrame `df` or
    of `trends` (frame_trends() / log_trends()); there must be requests to draw."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if trends is None:
        if df is None or len(df) == 0:
            raise ValueError("no requests to plot: the DataFrame is empty (widen --hours or "
                             "check --log-dir)")
        trends = frame_trends(df, bucket)
    if not trends:
        raise ValueError("no requests to plot (widen --hours or check --log-dir)")
    bucket = trends["bucket"]
    rows = trends["rows"]
    times = (np.array([r["bucket_start"] for r in rows], dtype="float64") * 1000).astype(
        "int64").astype("datetime64[ms]")
    column = lambda key: np.array([np.nan if r[key] is None else r[key] for r in rows],  # noqa: E731
                                  dtype="float64")
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    latency, shares, cost = fig.subplots(3, 1, sharex=True)

    for key, style in (("p50", "-"), ("p95", "-"), ("p99", "--")):
        latency.plot(times, column(key), style, label=key, marker=".")
    if slow_seconds is not None:
        latency.axhline(slow_seconds, color="grey", linestyle=":", label=f"slow ({slow_seconds:g} s)")
    latency.set_ylabel("seconds")
    latency.set_title(f"Request latency percentiles per {bucket}")
    latency.legend(loc="upper left")
    latency.grid(alpha=0.3)

    names = trends["stages"]
    if names:
        values = [np.nan_to_num(column(f"share_{n}")) * 100 for n in names]
        shares.stackplot(times, values, labels=names, alpha=0.8)
        shares.set_ylim(0, max(100, max((sum(v) for v in zip(*values)), default=100)))
        shares.legend(loc="upper left")
    else:
        shares.text(0.5, 0.5, "no stages recorded", ha="center", va="center",
                    transform=shares.transAxes)
    shares.set_ylabel("% of request time")
    shares.set_title("Share of request time by stage")
    shares.grid(alpha=0.3)

    by_model: dict = {}
    index = {r["bucket_start"]: i for i, r in enumerate(rows)}
    for start, model, per_hour in trends["cost_by_model"]:
        by_model.setdefault(model, np.zeros(len(rows)))[index[start]] = per_hour
    if by_model and sum(v.sum() for v in by_model.values()) > 0:
        for model, values in by_model.items():
            cost.plot(times, values, label=str(model), marker=".")
        cost.legend(loc="upper left")
    else:
        cost.text(0.5, 0.5, "no costs recorded", ha="center", va="center",
                  transform=cost.transAxes)
    cost.set_ylabel("dollars per hour")
    cost.set_title(f"Cost per hour by model (per {bucket})")
    cost.grid(alpha=0.3)
    cost.set_xlabel("time (UTC)")
    fig.suptitle(title or f"Request log trends: {trends['requests']:,} requests")
    return fig


def plot_trends(df, output: str | Path, **kwargs) -> Path:
    """Writes trends_figure(df) to `output` (PNG, SVG or PDF by extension); returns the path."""
    output = Path(output)
    fig = trends_figure(df, **kwargs)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    return output
