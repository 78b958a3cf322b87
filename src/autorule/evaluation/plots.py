"""The report's figures (matplotlib, Agg backend: no display needed). Each function draws one PNG
from an evaluate artifact's data and returns its path, or None when the data is not there."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402

from autorule.core.secrets import redact, redact_text  # noqa: E402
from autorule.evaluation import hacking  # noqa: E402

# The PNG's text chunks; they pass the redaction like every artifact's text.
PNG_METADATA = {"Software": f"autorule, matplotlib {matplotlib.__version__}"}


def save_figure(fig, path: Path, dpi: int) -> Path:
    """Writes ``fig`` as a PNG (its metadata redacted) and closes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, metadata=redact(PNG_METADATA))
    plt.close(fig)
    return path


def reward_curves(series: dict[str, Any], path: Path, dpi: int, window: int) -> Path | None:
    """One panel per reward term (and the total, length and KL), raw and smoothed."""
    names = hacking.reward_names(series)
    names += [n for n in sorted(series) if hacking.REWARD_TERM.match(n) and n not in names]
    names += [n for n in (hacking.LENGTH, "kl") if n in series]
    if not names:
        return None
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = series[name]["step"], series[name]["value"]
        if window > 1:
            ax.plot(steps, values, color="0.75", lw=1, label="logged")
            ax.plot(
                steps, hacking.smooth(values, window), color="C0", lw=2, label=f"mean of {window}"
            )
        else:
            ax.plot(steps, values, color="C0", lw=2, marker="." if len(steps) < 30 else None)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if window > 1:
        axes.flat[0].legend(fontsize=8)
    return save_figure(fig, path, dpi)


def rule_satisfaction(
    series: dict[str, Any], rules: Sequence[str], path: Path, dpi: int, window: int
) -> Path | None:
    """Each rule's satisfaction over training (``rules/<i>``), and their mean."""
    keys = sorted(
        (k for k in series if hacking.RULE_KEY.match(k)), key=lambda k: int(k.split("/")[1])
    )
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    cmap = plt.get_cmap("tab20")
    for n, key in enumerate(keys):
        index = int(key.split("/")[1])
        label = _short(rules[index]) if index < len(rules) else key
        steps, values = series[key]["step"], series[key]["value"]
        ax.plot(steps, hacking.smooth(values, window), lw=1.2, color=cmap(n % 20), label=label)
    if hacking.SATISFACTION in series:
        mean = series[hacking.SATISFACTION]
        ax.plot(
            mean["step"], hacking.smooth(mean["value"], window), color="k", lw=2.5, label="mean"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("share of responses satisfying the rule")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path, dpi)


def win_rates(rates: Sequence[tuple[str, dict]], path: Path, dpi: int) -> Path | None:
    """Left: win rates over the reference with their 95% intervals. Right: what became of every
    pair (wins, ties, losses, left out for an unreadable answer or a failed call)."""
    rates = [(label, r) for label, r in rates if r and r.get("pairs")]
    if not rates:
        return None
    labels = [label for label, _ in rates]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(max(8, 1.6 * len(labels) + 5), 3.8), gridspec_kw={"width_ratios": [1, 1.3]}
    )
    scored = [(i, r) for i, (_, r) in enumerate(rates) if r.get("rate") is not None]
    if scored:
        x = [i for i, _ in scored]
        rate = [r["rate"] for _, r in scored]
        left.bar(x, rate, color="C2", alpha=0.8)
        left.errorbar(
            x,
            rate,
            yerr=[
                [r["rate"] - r["low"] for _, r in scored],
                [r["high"] - r["rate"] for _, r in scored],
            ],
            fmt="none",
            ecolor="k",
            capsize=5,
        )
    else:
        left.text(0.5, 0.5, "no pair scored", ha="center", va="center", transform=left.transAxes)
    left.axhline(0.5, color="0.4", ls="--", lw=1)
    left.set_xticks(range(len(labels)), labels)
    left.set_ylim(0, 1)
    left.set_ylabel("win rate vs reference (95% CI)")
    outcomes = [
        ("wins", "C2", lambda r: r["wins"]),
        ("ties", "C1", lambda r: r["ties"]),
        ("losses", "C3", lambda r: r["losses"]),
        ("unreadable", "0.6", lambda r: r["unparsed_pairs"]),
        ("failed", "k", lambda r: r["pairs"] - r["scored"] - r["unparsed_pairs"]),
    ]
    base = [0] * len(rates)
    for name, color, count in outcomes:
        values = [count(r) for _, r in rates]
        right.barh(range(len(rates)), values, left=base, color=color, label=name)
        base = [b + v for b, v in zip(base, values, strict=True)]
    right.set_yticks(range(len(labels)), labels)
    right.invert_yaxis()
    right.set_xlabel("pairs")
    right.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi)


def lengths(sets: dict[str, Sequence[int]], path: Path, dpi: int) -> Path | None:
    """Histograms of response lengths in tokens, one per response set."""
    sets = {k: v for k, v in sets.items() if len(v)}
    if not sets:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(max(v) for v in sets.values())
    bins = min(40, max(5, top // 2 + 1))
    for n, (label, values) in enumerate(sets.items()):
        ax.hist(values, bins=bins, range=(0, top + 1), alpha=0.5, color=f"C{n}", label=label)
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("responses")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi)


def rule_agreement(rows: Sequence[dict], path: Path, dpi: int) -> Path | None:
    """Per rule, what the held-out pairs looked like: only the chosen answer satisfies it
    (agrees), only the rejected one (disagrees), both, neither; with the agreement rate."""
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.8))
    labels = [f"{r['index']}: {_short(r['rule'], 48)}" for r in rows]
    y = list(range(len(rows)))
    left = [0.0] * len(rows)
    outcomes = [
        ("agree", "chosen only (agrees)", "C2"),
        ("disagree", "rejected only (disagrees)", "C3"),
        ("both", "both", "0.55"),
        ("neither", "neither", "0.85"),
    ]
    for key, name, color in outcomes:
        share = [r[key] / r["pairs"] if r["pairs"] else 0.0 for r in rows]
        ax.barh(y, share, left=left, color=color, label=name)
        left = [a + b for a, b in zip(left, share, strict=True)]
    for i, r in enumerate(rows):
        rate = r.get("agreement")
        ax.text(1.01, i, "n/a" if rate is None else f"{rate:.2f}", va="center", fontsize=8)
    ax.text(1.01, -0.9, "agreement", fontsize=8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of held-out pairs")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return save_figure(fig, path, dpi)


def rm_vs_win_rate(points: Sequence[dict], path: Path, dpi: int) -> Path | None:
    """The RM score and the judged win rate of checkpoints along training."""
    usable = [p for p in points if p.get("win_rate") is not None]
    if len(usable) < 2:
        return None
    steps = [p["step"] for p in usable]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(
        steps,
        [p["win_rate"] for p in usable],
        yerr=[
            [p["win_rate"] - p["low"] for p in usable],
            [p["high"] - p["win_rate"] for p in usable],
        ],
        color="C2",
        marker="o",
        capsize=4,
        label="win rate vs reference",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("win rate (95% CI)", color="C2")
    ax.set_ylim(0, 1)
    if all(p.get("rm_mean") is not None for p in usable):
        twin = ax.twinx()
        twin.plot(steps, [p["rm_mean"] for p in usable], color="C0", marker="s", label="RM score")
        twin.set_ylabel("mean RM score", color="C0")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi)


def _short(text: str, width: int = 60) -> str:
    """Model text (a rule) as a label: secrets masked (drawn into pixels, it is past any later
    redaction), shortened, and ``$`` escaped so that matplotlib does not read it as math (an
    unbalanced formula would stop the drawing)."""
    label = textwrap.shorten(redact_text(str(text)), width=width, placeholder="...")
    return label.replace("$", r"\$")
