"""The report's plots: `write_plots(data, out_dir)` draws overview.png (four panels) and one PNG
per panel from the numbers `collect` read, through matplotlib's Agg canvas directly (no pyplot,
no global backend change), each written under a temporary name and renamed.
"""
from __future__ import annotations

import math
from pathlib import Path

from isrt.engine.io import atomic_path
from isrt.report.conclusions import LENGTH_GROWTH_LIMIT

PLOTS = ("overview", "accuracy", "length", "judge", "dpo")


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["t"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _panel_accuracy(ax, data):
    rows = data["iterations"]
    for key, label, marker in (("sampled_acc", "sampled (stage 1)", "o"), ("greedy_acc", "greedy (eval)", "s"),
                               ("judge_acc", "greedy, LLM judge score>=3", "^")):
        xs, ys = _series(rows, key)
        if key != "sampled_acc" and data["final"].get(key) is not None:
            xs, ys = xs + [data["planned"] if data["planned"] is not None else len(rows)], ys + [data["final"][key]]
        if xs:
            ax.plot(xs, ys, marker=marker, label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("answer accuracy vs. response length")
    ax.set_ylabel("accuracy")
    xs, ys = _series(rows, "words_mean")
    if len(xs) >= 2 and ys[0] > 0:
        # The failure i-SRT targets at a glance: length rising (right axis) while accuracy stays flat.
        twin = ax.twinx()
        twin.plot(xs, [y / ys[0] for y in ys], color="black", linestyle="--", marker=".",
                  label=f"mean words / pi_{xs[0]}'s (right)")
        twin.axhline(1 + LENGTH_GROWTH_LIMIT, color="red", linewidth=0.8, linestyle=":")
        lo, hi = min(ys) / ys[0], max(ys) / ys[0]
        twin.set_ylim(min(0.8, lo - 0.05), max(1 + LENGTH_GROWTH_LIMIT + 0.1, hi + 0.05))
        twin.set_ylabel(f"relative length (red: +{int(LENGTH_GROWTH_LIMIT * 100)}%)")
        twin.legend(fontsize=7, loc="upper left")


def _plot_keys(ax, rows: list[dict], keys) -> None:
    """One line per (row key, label, marker) of `keys` that has any numbers."""
    for key, label, marker in keys:
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker=marker, label=label)


def _panel_length(ax, data):
    _plot_keys(ax, data["iterations"], (("words_mean", "mean words", "o"), ("words_median", "median words", "s"),
                                        ("tokens_mean", "mean tokens", "^"),
                                        ("greedy_words_mean", "greedy mean words", "v")))
    ax.set_ylim(bottom=0)
    ax.set_title("response length")
    ax.set_ylabel("length")


def _panel_judge(ax, data):
    rows = data["iterations"]
    _plot_keys(ax, rows, (("swap_agreement", "swap agreement", "o"), ("gt_agreement", "GT agreement (kept)", "s"),
                          ("verdict_gt_agreement", "GT agreement (verdicts)", "^")))
    xs = [r["t"] for r in rows if r.get("judged")]
    if xs:
        ax.plot(xs, [r["kept"] / r["judged"] for r in rows if r.get("judged")], marker="x", linestyle=":",
                label="kept share")
    ax.axhline(0.5, color="gray", linewidth=0.8, linestyle="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("judge")
    ax.set_ylabel("share")


def _panel_dpo(ax, data):
    _plot_keys(ax, data["iterations"], (("dpo_loss", "loss (last epoch)", "o"), ("dpo_margin", "reward margin", "s"),
                                        ("dpo_acc", "reward accuracy", "^")))
    ax.axhline(math.log(2), color="gray", linewidth=0.8, linestyle="--")
    ax.set_title("DPO (dashed: ln 2)")


PANELS = {"accuracy": _panel_accuracy, "length": _panel_length, "judge": _panel_judge, "dpo": _panel_dpo}


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _finish(ax, data):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("policy pi_t (iteration t)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)


def write_plots(data: dict, out_dir: Path) -> list[Path]:
    """overview.png (the four panels) and one PNG per panel; matplotlib's Agg canvas directly,
    so no global backend is touched."""
    from matplotlib.figure import Figure

    paths = []
    fig = Figure(figsize=(11, 8))
    for ax, (name, draw) in zip(fig.subplots(2, 2).flat, PANELS.items()):
        draw(ax, data)
        _finish(ax, data)
    fig.suptitle(f"i-SRT run {Path(data['run_dir']).name}")
    fig.tight_layout()
    _save(fig, out_dir / "overview.png")
    paths.append(out_dir / "overview.png")
    for name, draw in PANELS.items():
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        draw(ax, data)
        _finish(ax, data)
        fig.tight_layout()
        _save(fig, out_dir / f"{name}.png")
        paths.append(out_dir / f"{name}.png")
    return paths


__all__ = ["PANELS", "PLOTS", "write_plots"]
