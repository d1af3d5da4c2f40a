"""PNG plots for a training run (matplotlib's Agg canvas, no display, no pyplot
global state, so they are safe from threads and in headless containers)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

DPI = 110


def _figure(size=(6.0, 4.5)) -> tuple[Figure, object]:
    fig = Figure(figsize=size, dpi=DPI, layout="tight")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def plot_loss_curves(history: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """One line per series (e.g. ``train_loss``, ``val_loss``) against epoch (1-based)."""
    fig, ax = _figure()
    plotted = False
    for name, values in history.items():
        vals = np.asarray(list(values), dtype=np.float64)
        if vals.size:
            ax.plot(np.arange(1, vals.size + 1), vals, marker="o" if vals.size < 30 else None, ms=3, label=name)
            plotted = True
    if plotted:
        positive = [v for vs in history.values() for v in vs if np.isfinite(v)]
        if positive and min(positive) > 0 and max(positive) / min(positive) > 50:
            ax.set_yscale("log")
        ax.legend()
    else:
        _note(ax, "no loss history")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE reconstruction loss")
    ax.set_title("Loss curves")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _groups(labels: np.ndarray, data_source) -> list[tuple[str, np.ndarray]]:
    groups = [("all", np.ones(labels.size, dtype=bool))]
    if data_source is not None:
        src = np.asarray(data_source, dtype=object).reshape(-1).astype(str)
        for source in sorted(set(src)):
            groups.append((source, src == source))
    return [(n, m) for n, m in groups if np.unique(labels[m]).size == 2]


def plot_roc_pr(
    errors,
    labels,
    path_roc: str | Path,
    path_pr: str | Path,
    data_source=None,
) -> tuple[Path, Path]:
    """ROC and precision-recall curves of the error as a malware score; with
    ``data_source`` also one curve per source (sources with a single class are skipped)."""
    errs = np.asarray(errors, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    groups = _groups(y, data_source)

    fig_roc, ax_roc = _figure()
    fig_pr, ax_pr = _figure()
    for name, mask in groups:
        fpr, tpr, _ = roc_curve(y[mask], errs[mask])
        ax_roc.plot(fpr, tpr, lw=2 if name == "all" else 1.2,
                    label=f"{name} (AUC={roc_auc_score(y[mask], errs[mask]):.3f})")
        prec, rec, _ = precision_recall_curve(y[mask], errs[mask])
        ax_pr.plot(rec, prec, lw=2 if name == "all" else 1.2, drawstyle="steps-post",
                   label=f"{name} (AP={average_precision_score(y[mask], errs[mask]):.3f})")
    ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    if groups:
        ax_roc.legend(loc="lower right")
        ax_pr.legend(loc="lower left")
    else:
        _note(ax_roc, "needs both benign and malware rows")
        _note(ax_pr, "needs both benign and malware rows")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (malware positive)",
               xlim=(0, 1), ylim=(0, 1.02))
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall (malware positive)",
              xlim=(0, 1), ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
    return _save(fig_roc, path_roc), _save(fig_pr, path_pr)


def plot_error_histogram(errors, labels, threshold: float, path: str | Path,
                         score_label: str = "reconstruction error (per-sample MSE)") -> Path:
    """Histograms of benign vs malware scores (``score_label`` names them), with the
    threshold; log-scale x when the scores span more than two decades."""
    errs = np.asarray(errors, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    fig, ax = _figure((7.0, 4.5))
    finite = errs[np.isfinite(errs)]
    positive = finite[finite > 0]
    # Log-scale only for scores that cannot be negative (grouped_error's z-score sums can).
    log_x = positive.size > 1 and finite.min() >= 0 and positive.max() / positive.min() > 100
    if finite.size == 0:
        _note(ax, "no errors")
    else:
        if log_x:
            floor = positive.min()
            bins = np.geomspace(floor, positive.max(), 60)
            clip = lambda a: np.clip(a, floor, None)  # noqa: E731 - zeros land in the first bin
            ax.set_xscale("log")
        else:
            lo, hi = float(finite.min()), float(finite.max())
            bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 60)
            clip = lambda a: a  # noqa: E731
        for cls, name, color in ((0, "benign", "tab:blue"), (1, "malware", "tab:red")):
            vals = errs[(y == cls) & np.isfinite(errs)]
            if vals.size:
                ax.hist(clip(vals), bins=bins, alpha=0.55, color=color, label=f"{name} (n={vals.size})")
        if np.isfinite(threshold) and (not log_x or threshold > 0):
            ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold={threshold:.4g}")
        ax.legend()
    ax.set_xlabel(score_label)
    ax.set_ylabel("rows")
    ax.set_title("Anomaly score by class")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_grouped_bars(categories: Sequence[str], series: Mapping[str, Sequence[float]], path: str | Path,
                      title: str, ylabel: str, horizontal: bool = False) -> Path:
    """One bar per category and series, side by side (e.g. the older and the newer data)."""
    fig, ax = _figure((7.0, max(3.0, 0.28 * len(categories) + 1.5)) if horizontal else (7.0, 4.5))
    if not categories:
        _note(ax, "nothing to show")
    positions = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        offset = positions + (k - (len(series) - 1) / 2) * width
        if horizontal:
            ax.barh(offset, list(values), height=width, label=name)
        else:
            ax.bar(offset, list(values), width=width, label=name)
    if horizontal:
        ax.set_yticks(positions, list(categories), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
    else:
        ax.set_xticks(positions, list(categories), rotation=30 if len(categories) > 6 else 0, ha="right" if len(categories) > 6 else "center")
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1 and categories:
        ax.legend()
    return _save(fig, path)


def plot_score_distributions(scores: Mapping[str, np.ndarray], thresholds: Mapping[str, float], path: str | Path,
                             title: str) -> Path:
    """Histograms of several score sets on one log-spaced axis, each with its threshold."""
    fig, ax = _figure()
    finite = [np.asarray(s, dtype=np.float64) for s in scores.values()]
    finite = [s[np.isfinite(s) & (s > 0)] for s in finite]
    if not any(len(s) for s in finite):
        _note(ax, "no positive score to show")
        return _save(fig, path)
    low = min(s.min() for s in finite if len(s))
    high = max(s.max() for s in finite if len(s))
    bins = np.geomspace(low, high * 1.0001, 40) if high > low else 10
    for (name, _), values in zip(scores.items(), finite):
        line = ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=name)[2][0]
        if name in thresholds:
            ax.axvline(thresholds[name], color=line.get_edgecolor(), linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("anomaly score (dashed: each version's threshold)")
    ax.set_ylabel("apps")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)
