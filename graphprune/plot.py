"""The sweep's plot: quality against latency and against MACs kept, the Pareto front
highlighted. matplotlib is an optional extra (``pip install graphprune[plot]``): it is
imported here only, when a plot is drawn."""

from __future__ import annotations

#: line colours of named series (rows with a "series" key), in order of appearance
SERIES_COLOURS = ("#d1495b", "#00798c", "#edae49", "#30638e", "#6a4c93")


def render(rows: list[dict], title: str, latency_label: str = "latency (ms, median)"):
    """A figure of two panels for the sweep's ``rows`` (row dicts with ``quality``,
    ``latency_ms``, ``macs_kept``, ``pareto_latency``, ``pareto_macs``; id "original" is
    the input model). Rows with a ``series`` name are drawn as one line per series (a
    benchmark's curves) instead of grey points. Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok" and r.get("quality") is not None]
    style = {
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
    with plt.rc_context(style):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
        panels = (
            (axes[0], "latency_ms", "pareto_latency", latency_label, "quality vs latency"),
            (
                axes[1],
                "macs_kept",
                "pareto_macs",
                "MACs kept (fraction of the original)",
                "quality vs MACs",
            ),
        )
        for ax, key, mark, xlabel, name in panels:
            pts = [r for r in ok if r.get(key) is not None]
            pruned = [r for r in pts if r["id"] != "original"]
            front = sorted((r for r in pts if r.get(mark)), key=lambda r: r[key])
            loose = [r for r in pruned if "series" not in r]
            if loose:
                ax.scatter(
                    [r[key] for r in loose],
                    [r["quality"] for r in loose],
                    s=28,
                    color="#9aa5b1",
                    alpha=0.85,
                    label="configuration",
                    zorder=2,
                )
            names = list(dict.fromkeys(r["series"] for r in pruned if "series" in r))
            for i, series in enumerate(names):
                line = [r for r in pruned if r.get("series") == series]
                line.sort(key=lambda r: r[key])
                ax.plot(
                    [r[key] for r in line],
                    [r["quality"] for r in line],
                    "-s",
                    color=SERIES_COLOURS[i % len(SERIES_COLOURS)],
                    markersize=5,
                    linewidth=1.6,
                    label=series,
                    zorder=3,
                )
            if front:
                ax.plot(
                    [r[key] for r in front],
                    [r["quality"] for r in front],
                    "-o",
                    color="#d1495b",
                    markersize=6,
                    linewidth=1.8,
                    label="Pareto front",
                    zorder=3,
                )
            orig = [r for r in pts if r["id"] == "original"]
            if orig:
                ax.scatter(
                    [orig[0][key]],
                    [orig[0]["quality"]],
                    marker="*",
                    s=180,
                    color="#00798c",
                    edgecolor="black",
                    linewidth=0.6,
                    label="original",
                    zorder=4,
                )
            ax.set_xlabel(xlabel)
            ax.set_ylabel("quality (relative to the original)")
            ax.set_title(name)
            ax.grid(True, linestyle=":", linewidth=0.7, alpha=0.8)
            ax.legend(loc="lower right", frameon=True)
        fig.suptitle(f"graphprune sweep: {title}", fontsize=12, fontweight="bold")
    return fig
