"""
The ratio chart of docs/benchmarks.rst: one panel per metric, one bar per
server, each server's median divided by bare twisted.web's (log scale).
Runs in bench/.venv (matplotlib).

    python chart.py results.json out.png
"""

import json
import math
import sys
from itertools import groupby

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

COLORS = {
    "txawsgi": "#1f6feb", "txawsgi-threads": "#58a6ff", "txawsgi-w2": "#1f6feb",
    "twisted": "#444444", "twisted-wsgi": "#999999",
}  # fmt: skip
OTHER = "#d29922"


def main(source, target):
    results = json.load(open(source))
    panels = [(key, list(rows)) for key, rows in groupby(results["summary"], key=lambda r: r["metric"])]
    panels = [(k, rows) for k, rows in panels if any(r["median"] is not None for r in rows)]
    cols = 3
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(15, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (key, rows) in zip(axes.flat, panels):
        first = rows[0]
        names = [r["server"] for r in rows]
        ratios = [r["ratio"] for r in rows]
        shown = [max(r, 0.01) if r is not None else 0.01 for r in ratios]
        known = [v for v, r in zip(shown, ratios) if r is not None]
        ys = range(len(rows))
        ax.barh(ys, [v if r is not None else 0 for v, r in zip(shown, ratios)], color=[COLORS.get(n, OTHER) for n in names])
        ax.set_yticks(list(ys), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        lo = min(known + [0.5]) / 1.6
        hi = max(known + [2.0]) * 2.5
        ax.set_xlim(lo, hi)
        ticks = [t for t in (0.01, 0.03, 0.1, 0.25, 0.5, 1, 2, 4, 10, 30, 100) if lo <= t <= hi]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        for y, r, s in zip(ys, ratios, shown):
            label = "n/a" if r is None else (f"{r:.2f}" if r < 10 else f"{r:.0f}")
            ax.text(s * 1.08 if r is not None else lo * 1.1, y, label, va="center", fontsize=7)
        better = "higher" if first["higher_is_better"] else "lower"
        ax.set_title(f"{first['title']}\n({first['unit']}; ratio to bare Twisted, {better} is better)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"txawsgi benchmarks, {results['date'][:10]}: median / bare twisted.web median", fontsize=11)
    fig.tight_layout()
    fig.savefig(target, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
