"""PNG plots of the evaluation: one confusion matrix per comparison and an agreement bar chart.

Fixed figure sizes (so the files have a known pixel size) and the Agg backend
(no display on a node).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100
CONFUSION_SIZE_IN = (5.0, 4.5)  # 500 x 450 px
AGREEMENT_SIZE_IN = (9.0, 4.5)  # 900 x 450 px
CONFUSION_PX = (int(CONFUSION_SIZE_IN[0] * DPI), int(CONFUSION_SIZE_IN[1] * DPI))
AGREEMENT_PX = (int(AGREEMENT_SIZE_IN[0] * DPI), int(AGREEMENT_SIZE_IN[1] * DPI))


def confusion_png(path: Path, counts: list[list[int]], categories: list[str], test_label: str,
                  reference_label: str, title: str) -> Path:
    """Counts in each cell; the diagonal (agreement) is outlined."""
    data = np.asarray(counts)
    fig, ax = plt.subplots(figsize=CONFUSION_SIZE_IN, dpi=DPI)
    ax.imshow(data, cmap="Blues", vmin=0, vmax=max(1, int(data.max())))
    k = len(categories)
    ax.set_xticks(range(k), categories)
    ax.set_yticks(range(k), categories)
    ax.set_xlabel(test_label)
    ax.set_ylabel(reference_label)
    ax.set_title(title, fontsize=10)
    threshold = data.max() / 2 if data.max() else 1
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(data[i, j]), ha="center", va="center",
                    color="white" if data[i, j] > threshold else "black", fontsize=11)
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=1.5))
    fig.subplots_adjust(left=0.2, right=0.95, bottom=0.15, top=0.9)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def agreement_png(path: Path, rows: list[dict]) -> Path:
    """Accuracy (Wilson 95 % CI) and linearly weighted kappa (bootstrap 95 % CI) per comparison.

    `rows`: {"label", "accuracy", "accuracy_low", "accuracy_high", "kappa", "kappa_low", "kappa_high"},
    None where undefined (drawn as an empty slot).
    """
    fig, ax = plt.subplots(figsize=AGREEMENT_SIZE_IN, dpi=DPI)
    x = np.arange(len(rows))
    width = 0.38
    for offset, key, colour, name in ((-width / 2, "accuracy", "#1f77b4", "accuracy (Wilson 95 % CI)"),
                                      (width / 2, "kappa", "#ff7f0e", "weighted kappa (bootstrap 95 % CI)")):
        values = [r[key] if r[key] is not None else 0.0 for r in rows]
        low = [r[key] - r[f"{key}_low"] if r[key] is not None and r[f"{key}_low"] is not None else 0.0
               for r in rows]
        high = [r[f"{key}_high"] - r[key] if r[key] is not None and r[f"{key}_high"] is not None else 0.0
                for r in rows]
        # a percentile bootstrap interval need not contain the point estimate (small, skewed samples)
        low, high = [max(v, 0.0) for v in low], [max(v, 0.0) for v in high]
        ax.bar(x + offset, values, width, color=colour, label=name, yerr=[low, high], capsize=4)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [r["label"] for r in rows], fontsize=8)
    ax.set_ylim(min(-0.1, min((r["kappa_low"] or 0) for r in rows) - 0.05) if rows else -0.1, 1.05)
    ax.set_ylabel("agreement")
    for i, r in enumerate(rows):
        for offset, key in ((-width / 2, "accuracy"), (width / 2, "kappa")):
            if r[key] is None:
                ax.text(i + offset, 0.02, "n/a", ha="center", va="bottom", fontsize=8)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    ax.set_title("Agreement with 95 % intervals", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.22, top=0.9)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
