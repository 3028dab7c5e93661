"""Trend charts of the request log: latency percentiles, stage share and cost per hour by model.

Uses matplotlib's object API with the Agg canvas, not pyplot: no display is needed and the
caller's (a notebook's) backend is left as it is.
"""
from __future__ import annotations

from pathlib import Path

from .analysis import choose_bucket, cost_by_model_series, stage_names, time_series


def trends_figure(df, *, bucket: str | None = None, slow_seconds: float | None = None,
                  title: str | None = None):
    """A matplotlib Figure with three panels over time; `df` must not be empty."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(df) == 0:
        raise ValueError("no requests to plot: the DataFrame is empty (widen --hours or check "
                         "--log-dir)")
    bucket = choose_bucket(df, bucket)
    series = time_series(df, bucket)
    fig = Figure(figsize=(11, 10), layout="constrained")
    FigureCanvasAgg(fig)
    latency, shares, cost = fig.subplots(3, 1, sharex=True)

    for column, style in (("p50", "-"), ("p95", "-"), ("p99", "--")):
        latency.plot(series.index, series[column], style, label=column, marker=".")
    if slow_seconds is not None:
        latency.axhline(slow_seconds, color="grey", linestyle=":", label=f"slow ({slow_seconds:g} s)")
    latency.set_ylabel("seconds")
    latency.set_title(f"Request latency percentiles per {bucket}")
    latency.legend(loc="upper left")
    latency.grid(alpha=0.3)

    names = [n for n in stage_names(df) if f"share_{n}" in series]
    if names:
        values = [series[f"share_{n}"].fillna(0.0).to_numpy() * 100 for n in names]
        shares.stackplot(series.index, values, labels=names, alpha=0.8)
        shares.set_ylim(0, max(100, max((sum(v) for v in zip(*values)), default=100)))
        shares.legend(loc="upper left")
    else:
        shares.text(0.5, 0.5, "no stages recorded", ha="center", va="center",
                    transform=shares.transAxes)
    shares.set_ylabel("% of request time")
    shares.set_title("Share of request time by stage")
    shares.grid(alpha=0.3)

    by_model = cost_by_model_series(df, bucket)
    if by_model.shape[1] and by_model.to_numpy().sum() > 0:
        for model in by_model.columns:
            cost.plot(by_model.index, by_model[model], label=str(model), marker=".")
        cost.legend(loc="upper left")
    else:
        cost.text(0.5, 0.5, "no costs recorded", ha="center", va="center",
                  transform=cost.transAxes)
    cost.set_ylabel("dollars per hour")
    cost.set_title(f"Cost per hour by model (per {bucket})")
    cost.grid(alpha=0.3)
    cost.set_xlabel("time (UTC)")
    fig.suptitle(title or f"Request log trends: {len(df):,} requests")
    return fig


def plot_trends(df, output: str | Path, **kwargs) -> Path:
    """Writes trends_figure(df) to `output` (PNG, SVG or PDF by extension); returns the path."""
    output = Path(output)
    fig = trends_figure(df, **kwargs)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    return output
