"""The digest's trend chart: mentions per day by category as a small stacked bar PNG."""
from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from datetime import date

from alerts.render import CATEGORY_COLOURS, CATEGORY_LABELS, CATEGORY_ORDER

WIDTH_PX, HEIGHT_PX, DPI = 560, 200, 100
# matplotlib's font cache and text layout are shared state; digests may render in threads.
_LOCK = threading.Lock()
# Fixed settings so a user's matplotlibrc cannot change the bytes.
_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.edgecolor": "#9aa0a6",
    "axes.linewidth": 0.6,
    "xtick.color": "#5f6368",
    "ytick.color": "#5f6368",
    "xtick.major.size": 0,
    "ytick.major.size": 0,
    "savefig.facecolor": "#ffffff",
    "path.simplify": True,
}


def trend_categories(trend: Sequence[tuple[date, dict[str, int]]]) -> list[str]:
    """The categories with mentions in ``trend``, in priority order, unknown ones last."""
    seen = {name for _, counts in trend for name, n in counts.items() if n}
    known = [name for name in CATEGORY_ORDER if name in seen]
    return known + sorted(seen - set(CATEGORY_ORDER))


def render_trend_png(trend: Sequence[tuple[date, dict[str, int]]]) -> bytes:
    """A 560x200 PNG of mentions per day, stacked by category; same data, same bytes."""
    import matplotlib  # lazily: a second of import time the daemon only pays for digests
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    days = [day for day, _ in trend]
    categories = trend_categories(trend)
    positions = list(range(len(days)))
    with _LOCK, matplotlib.rc_context(_RC):
        figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
        FigureCanvasAgg(figure)
        axes = figure.add_axes((0.08, 0.14, 0.88, 0.70))
        bottoms = [0] * len(days)
        for name in categories:
            heights = [counts.get(name, 0) for _, counts in trend]
            axes.bar(positions, heights, bottom=bottoms, width=0.72, linewidth=0,
                     color=CATEGORY_COLOURS.get(name, CATEGORY_COLOURS["none"]),
                     label=CATEGORY_LABELS.get(name, name))
            bottoms = [b + h for b, h in zip(bottoms, heights)]
        axes.set_xlim(-0.6, max(len(days), 1) - 0.4)
        axes.set_ylim(0, max([*bottoms, 1]) * 1.1)
        axes.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        axes.grid(axis="y", color="#e8eaed", linewidth=0.6)
        axes.set_axisbelow(True)
        for side in ("top", "right", "left"):
            axes.spines[side].set_visible(False)
        step = max(1, -(-len(days) // 10))  # at most ~10 date labels, however long the window
        ticks = positions[::-1][::step][::-1]  # counted back from the newest day, always labelled
        axes.set_xticks(ticks, [f"{days[i].day} {days[i]:%b}" for i in ticks])
        if categories:
            figure.legend(loc="upper left", bbox_to_anchor=(0.05, 1.0), ncols=len(categories),
                          frameon=False, handlelength=1.0, handleheight=1.0,
                          columnspacing=1.4, borderaxespad=0.2)
        else:
            axes.text(0.5, 0.5, "No mentions in this window", transform=axes.transAxes,
                      ha="center", va="center", color="#5f6368")
        out = io.BytesIO()
        figure.savefig(out, format="png", dpi=DPI, metadata={"Software": None},
                       pil_kwargs={"optimize": True})
    return out.getvalue()
