"""Figures drawn from saved results (so they can be redrawn without re-running)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_imp(summary: dict, out_dir) -> list[Path]:
    """Test accuracy against the fraction of weights remaining (log axis, controls too), and per-layer sparsity."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds = summary["rounds"]
    config = summary.get("config", {})
    title = f"{config.get('model', '')} on {config.get('dataset', '')}"
    density = [100 * r["density"] for r in rounds]

    seeds = len(summary.get("seeds", [])) or 1
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label, style in (("", f"ticket (rewind {config.get('rewind', '')})", "o-"),
                              ("reinit_", "same mask, random reinit", "s--"),
                              ("random_mask_", "random mask, same layer sparsity", "^:")):
        acc = f"{key}test_accuracy"
        rows = [r for r in rounds if acc in r]
        if not rows:
            continue
        x = [100 * r["density"] for r in rows]
        line, = ax.plot(x, [100 * r[acc] for r in rows], style, label=label)
        if seeds > 1 and all(f"{acc}_std" in r for r in rows):
            # the band: mean +- one standard deviation over the seeds
            ax.fill_between(x, [100 * (r[acc] - r[f"{acc}_std"]) for r in rows],
                            [100 * (r[acc] + r[f"{acc}_std"]) for r in rows], color=line.get_color(), alpha=0.2,
                            linewidth=0)
    if seeds > 1:
        title += f", mean and std over {seeds} seeds"
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ticks = [d for d in density]
    ax.set_xticks(ticks[:: max(1, len(ticks) // 8)])
    ax.get_xaxis().set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.minorticks_off()
    fig.tight_layout()
    accuracy_path = out_dir / "accuracy_vs_remaining.png"
    _save(fig, accuracy_path)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    layers = list(rounds[0]["layer_sparsity"])
    for layer in layers:
        ax.plot([r["round"] for r in rounds], [100 * (1 - r["layer_sparsity"][layer]) for r in rounds], "o-",
                label=layer)
    ax.plot([r["round"] for r in rounds], density, "k--", label="all layers")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("weights remaining (%)")
    ax.set_title(f"per-layer density, {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    layer_path = out_dir / "layer_sparsity.png"
    _save(fig, layer_path)
    plt.close(fig)
    return [accuracy_path, layer_path]


def _save(fig, path: Path) -> None:
    """Write the figure as PNG atomically (a crash or a reader never sees half an image)."""
    from lth_sparse.runs import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
