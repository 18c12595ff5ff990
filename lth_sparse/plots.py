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
    for key, label, style in (
        (
            "",
            f"ticket (rewind {config.get('rewind', '')})"
            + (", mask search" if config.get("search_epochs") is not None else ""),
            "o-",
        ),
        ("sparse_", "ticket, full sparse training (AIMP)", "D-"),
        ("reinit_", "same mask, random reinit", "s--"),
        ("random_mask_", "random mask, same layer sparsity", "^:"),
    ):
        acc = f"{key}test_accuracy"
        rows = [r for r in rounds if acc in r]
        if not rows:
            continue
        x = [100 * r["density"] for r in rows]
        (line,) = ax.plot(x, [100 * r[acc] for r in rows], style, label=label)
        if seeds > 1 and all(f"{acc}_std" in r for r in rows):
            # the band: mean +- one standard deviation over the seeds
            ax.fill_between(
                x,
                [100 * (r[acc] - r[f"{acc}_std"]) for r in rows],
                [100 * (r[acc] + r[f"{acc}_std"]) for r in rows],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
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
        ax.plot(
            [r["round"] for r in rounds], [100 * (1 - r["layer_sparsity"][layer]) for r in rounds], "o-", label=layer
        )
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


def _line_with_band(ax, x, mean, std, fmt="o-", *, alpha=0.15, **style):
    """Plot ``mean`` against ``x`` and shade ``mean +- std`` in the line's colour (``std`` None: the line alone);
    returns the line."""
    (line,) = ax.plot(x, mean, fmt, **style)
    if std is not None:
        ax.fill_between(
            x,
            [m - d for m, d in zip(mean, std)],
            [m + d for m, d in zip(mean, std)],
            color=line.get_color(),
            alpha=alpha,
            linewidth=0,
        )
    return line


def _save(fig, path: Path) -> None:
    """Write the figure as PNG atomically (a crash or a reader never sees half an image)."""
    from lth_sparse.atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def short_task_names(tasks: list[str]) -> list[str]:
    """Task names for labels: without the ``:shape=`` every task got, and without the data set's name where all
    share it (``fashion-mnist:half=a`` -> ``half=a``)."""
    names = [":".join(p for p in t.split(":") if not p.startswith("shape=")) for t in tasks]
    bases = {n.split(":")[0] for n in names}
    if len(bases) == 1 and all(":" in n for n in names):
        names = [n.split(":", 1)[1] for n in names]
    return names


def plot_consensus(summary: dict, out_dir) -> list[Path]:
    """The consensus pipeline's figures: each ticket's test accuracy on each task (mean +- std over the seeds),
    the Jaccard distance matrix of the bespoke masks, the per-layer count of weights kept by 0..N tasks, and the
    mean pairwise distance over the IMP rounds beside that of independent masks."""
    import numpy as np

    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = short_task_names(summary["tasks"])
    n = len(tasks)
    seeds = len(summary["seeds"])
    paths = []
    suffix = f" (mean and std over {seeds} seeds)" if seeds > 1 else ""

    if summary.get("retrain"):
        by = {(r["ticket"], r["target"]): r for r in summary["retrain"]}
        fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * n + 2), 4.2))
        series = [("dense", "dense network", None)]
        series += [
            ("consensus", "consensus ticket", "consensus"),
            ("random", "random mask, consensus's layer sparsity", "random"),
        ]
        series += [
            ("own", "bespoke ticket of the task (same sparsity)", None),
            ("others", "bespoke tickets of the other tasks (mean)", None),
        ]
        width = 0.8 / len(series)
        for k, (key, label, ticket) in enumerate(series):
            means, stds = [], []
            for t in range(n):
                if key == "dense":
                    s = summary["dense"][t]
                    means.append(s["mean"]), stds.append(s["std"])
                elif key == "own":
                    r = by.get((f"bespoke_{t}", t))
                    means.append(r["test_accuracy"]["mean"] if r else np.nan)
                    stds.append(r["test_accuracy"]["std"] if r else 0)
                elif key == "others":
                    rows = [by[(f"bespoke_{j}", t)] for j in range(n) if j != t and (f"bespoke_{j}", t) in by]
                    means.append(np.mean([r["test_accuracy"]["mean"] for r in rows]) if rows else np.nan)
                    stds.append(np.std([r["test_accuracy"]["mean"] for r in rows]) if rows else 0)
                else:
                    r = by.get((ticket, t))
                    means.append(r["test_accuracy"]["mean"] if r else np.nan)
                    stds.append(r["test_accuracy"]["std"] if r else 0)
            x = np.arange(n) + (k - (len(series) - 1) / 2) * width
            ax.bar(x, 100 * np.array(means), width, yerr=100 * np.array(stds), label=label, capsize=2)
        ax.set_xticks(np.arange(n), tasks, rotation=15, fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        low = min(100 * r["test_accuracy"]["mean"] for r in summary["retrain"])
        ax.set_ylim(max(0.0, low - 10), 100)
        c = summary["consensus"]
        ax.set_title(
            f"tickets retrained on each task: consensus {100 * c['sparsity']['mean']:.1f}% sparse" + suffix, fontsize=9
        )
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        fig.tight_layout()
        paths.append(out_dir / "accuracy_by_task.png")
        _save(fig, paths[-1])
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(1.0 * n + 3, 1.0 * n + 2))
    matrix = np.array(summary["jaccard"])
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.2f}",
                ha="center",
                va="center",
                color="w" if matrix[i, j] < 0.6 else "k",
                fontsize=8,
            )
    ax.set_xticks(range(n), tasks, rotation=30, fontsize=7, ha="right")
    ax.set_yticks(range(n), tasks, fontsize=7)
    fig.colorbar(image, ax=ax, label="Jaccard distance")
    ax.set_title(f"bespoke masks, round {summary['config']['intersect_round']}", fontsize=9)
    fig.tight_layout()
    paths.append(out_dir / "jaccard.png")
    _save(fig, paths[-1])
    plt.close(fig)

    layers = list(summary["overlap"])
    fig, axes = plt.subplots(1, len(layers), figsize=(3.0 * len(layers), 3.2), squeeze=False)
    for ax, name in zip(axes[0], layers):
        counts = np.array(summary["overlap"][name])
        ax.bar(range(len(counts)), counts / counts.sum() * 100)
        ax.set_xticks(range(len(counts)))
        ax.set_xlabel("kept by this many tasks")
        ax.set_title(name, fontsize=9)
    axes[0][0].set_ylabel("share of the layer's weights (%)")
    fig.suptitle(
        f"weights kept by 0..{n} bespoke tickets (round {summary['config']['intersect_round']})" + suffix, fontsize=9
    )
    fig.tight_layout()
    paths.append(out_dir / "overlap_by_layer.png")
    _save(fig, paths[-1])
    plt.close(fig)

    rounds = summary["over_rounds"]
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    x = [100 * r["density"] for r in rounds]
    ax.plot(x, [r["jaccard"] for r in rounds], "o-", label="bespoke masks (mean over pairs)")
    ax.plot(x, [r["independent_jaccard"] for r in rounds], "k--", label="independent masks of those densities")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xticks(x[:: max(1, len(x) // 8)])
    ax.get_xaxis().set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.minorticks_off()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("Jaccard distance")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "jaccard_over_rounds.png")
    _save(fig, paths[-1])
    plt.close(fig)
    return paths


def plot_compare(result: dict, out_dir) -> list[Path]:
    """The Jaccard distance between runs' masks over the pruning rounds: in total (with the distance of
    independent masks of those densities) and per layer."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def label(pair):
        return f"{Path(pair['a']).name} vs {Path(pair['b']).name}"

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for pair in result["pairs"]:
        rounds = pair["rounds"]
        x = [r["round"] for r in rounds]
        (line,) = ax.plot(x, [r["jaccard"] for r in rounds], "o-", label=label(pair))
        if len(pair["seeds"]) > 1:
            ax.fill_between(
                x,
                [r["jaccard"] - r["jaccard_std"] for r in rounds],
                [r["jaccard"] + r["jaccard_std"] for r in rounds],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
        ax.plot(x, [r["independent_jaccard"] for r in rounds], ":", color=line.get_color(), linewidth=1)
    ax.set_xlabel("pruning round")
    ax.set_ylabel("Jaccard distance (dotted: independent masks)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("masks compared round by round, seed by seed", fontsize=9)
    fig.tight_layout()
    paths = [out_dir / "jaccard_over_rounds.png"]
    _save(fig, paths[-1])
    plt.close(fig)

    layers = list(result["pairs"][0]["rounds"][0]["jaccard_per_layer"]) if result["pairs"][0]["rounds"] else []
    if layers:
        fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.2), squeeze=False)
        for ax, name in zip(axes[0], layers):
            for pair in result["pairs"]:
                ax.plot(
                    [r["round"] for r in pair["rounds"]],
                    [r["jaccard_per_layer"][name] for r in pair["rounds"]],
                    "o-",
                    markersize=3,
                    label=label(pair),
                )
            ax.set_title(name, fontsize=9)
            ax.set_ylim(0, 1)
            ax.set_xlabel("pruning round")
            ax.grid(True, alpha=0.3)
        axes[0][0].set_ylabel("Jaccard distance")
        axes[0][-1].legend(fontsize=6)
        fig.tight_layout()
        paths.append(out_dir / "jaccard_per_layer.png")
        _save(fig, paths[-1])
        plt.close(fig)
    return paths


def plot_transfer(summary: dict, out_dir, labels: dict[str, str]) -> list[Path]:
    """The transfer pipeline's figures, as Morcos et al. (2019)'s Figures 2-5: per target, test accuracy on it
    against the source ticket's weights remaining, mean +- std over the seeds: with one source a line per ticket
    kind, with several a line per source (its transferred ticket solid, its random ticket dashed); the target's
    own tickets where given. With several pairs, the transfer matrix at each ``--at`` (the gap to the target's
    own ticket where known, else the transferred ticket's accuracy, each cell with the source round it reads; a
    cell no transferred round is near enough to fill is left blank). ``labels``: each ticket kind's legend text."""

    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = len(summary.get("seeds", [])) or 1
    sources = summary["sources"]
    styles = {
        "rewind-preserved": "o-",
        "fresh-global": "s--",
        "fresh-preserved": "^:",
        "fresh-local": "v:",
        "rewind-local": "d-.",
        "rewind-global": "x-.",
    }
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def band(ax, x, stats, color, fmt, **style):
        _line_with_band(
            ax,
            x,
            [100 * s["mean"] for s in stats],
            [100 * s["std"] for s in stats] if seeds > 1 else None,
            fmt,
            color=color,
            **style,
        )

    paths = []
    for target in summary["targets"]:
        pairs = [p for p in summary["pairs"] if p["target"] == target["target"]]
        if not pairs:
            continue
        fig, ax = plt.subplots(figsize=(6.8, 4.4))
        for n, pair in enumerate(pairs):
            source = sources[pair["source"]].get("dataset") or f"source {pair['source']}"
            kinds = (
                pair["tickets"]
                if len(pairs) == 1
                else {k: v for k, v in pair["tickets"].items() if k in ("rewind-preserved", "fresh-global")}
            )
            for m, (kind, rows) in enumerate(kinds.items()):
                color = colors[(m if len(pairs) == 1 else n) % len(colors)]
                label = (
                    labels.get(kind, kind)
                    if len(pairs) == 1
                    else (f"{source}: {'transferred' if kind == 'rewind-preserved' else 'random'} ticket")
                )
                band(
                    ax,
                    [100 * r["source_density"] for r in rows],
                    [r["test_accuracy"] for r in rows],
                    color,
                    styles.get(kind, "o-"),
                    label=label,
                    markersize=4,
                )
        if "own" in target:
            rows = target["own"]["rounds"]
            _line_with_band(
                ax,
                [100 * r["density"] for r in rows],
                [100 * r["test_accuracy"]["mean"] for r in rows],
                [100 * r["test_accuracy"]["std"] for r in rows] if len(target["own"]["seeds"]) > 1 else None,
                "*-",
                alpha=0.1,
                color="k",
                label="target's own ticket",
                markersize=5,
            )
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.get_xaxis().set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.set_xlabel("source ticket's weights remaining (%)")
        ax.set_ylabel("test accuracy on the target (%)")
        task = ":".join(part for part in pairs[0]["task"].split(":") if not part.startswith("shape="))
        title = (f"{sources[pairs[0]['source']].get('dataset')} -> " if len(pairs) == 1 else "") + task
        if seeds > 1:
            title += f", mean and std over {seeds} seeds"
        ax.set_title(title, fontsize="medium")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"transfer_target_{target['target']}.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    if len(summary["pairs"]) > 1:
        for entry in summary.get("matrix", []):
            values = entry["gap"] if entry.get("gap") is not None else entry["accuracy"]
            what = "transfer gap (points)" if entry.get("gap") is not None else "transferred ticket's accuracy (%)"
            fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(summary["targets"]), 1.4 + 0.6 * len(sources)))
            grid = [[float("nan") if v is None else 100 * v for v in row] for row in values]
            image = ax.imshow(grid, cmap="RdBu" if entry.get("gap") is not None else "viridis", aspect="auto")
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if v == v:
                        ax.text(
                            j,
                            i,
                            (f"{v:+.1f}" if entry.get("gap") is not None else f"{v:.1f}")
                            + f"\nround {entry['round'][i][j]}",
                            ha="center",
                            va="center",
                            fontsize="small",
                        )
            ax.set_xticks(
                range(len(summary["targets"])),
                short_task_names([t["name"] for t in summary["targets"]]),
                fontsize="small",
            )
            ax.set_yticks(range(len(sources)), [str(s.get("dataset")) for s in sources], fontsize="small")
            ax.set_title(f"{what} at {100 * entry['at']:.0f}% pruned", fontsize="medium")
            fig.colorbar(image, ax=ax)
            fig.tight_layout()
            path = out_dir / f"transfer_matrix_{round(1000 * entry['at']):04d}.png"
            _save(fig, path)
            plt.close(fig)
            paths.append(path)
    return paths


def plot_instability(summary: dict, out_dir) -> list[Path]:
    """The instability pipeline's figures: test error along the path for each rewind point or round (mean +- std
    over seeds x pairs; alpha = 0 is the first copy), the error barrier against the point (with the stability
    threshold), the barriers between successive IMP tickets, and the search's probes."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = summary.get("config", {})
    title = f"{config.get('model', '')} on {config.get('dataset', '')}, bn {summary.get('bn')}"
    paths = []
    points = summary["points"]
    if points:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for row in points:
            _line_with_band(
                ax,
                row["alphas"],
                [100 * v for v in row["test_error_curve"]],
                [100 * v for v in row["test_error_curve_std"]],
                markersize=3,
                label=row["point"],
            )
        ax.set_xlabel("alpha (0: copy 1, 1: copy 2)")
        ax.set_ylabel("test error (%)")
        ax.set_title(f"error along the path, {title}", fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
        fig.tight_layout()
        path = out_dir / "error_along_path.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)

        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        rounds = all(r["point"].startswith("round_") for r in points)
        x = [100 * (1 - r.get("sparsity", 0.0)) if rounds else r.get("iteration", i) for i, r in enumerate(points)]
        for key, label, style in (("test_error_barrier", "test", "o-"), ("train_error_barrier", "train", "s--")):
            mean = [100 * r[key]["mean"] for r in points]
            std = [100 * r[key]["std"] for r in points]
            ax.errorbar(x, mean, yerr=std, fmt=style, capsize=3, label=f"{label} error barrier")
        ax.axhline(100 * summary["threshold"], color="k", linestyle=":", label="stability threshold")
        if rounds:
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.set_xlabel("weights remaining (%)")
        else:
            linthresh = max(1, min([v for v in x if v > 0], default=1))
            ax.set_xscale("symlog", linthresh=linthresh)
            ax.set_xlim(left=-0.3 * linthresh, right=1.5 * max(x) if max(x) > 0 else 1)  # no negative decades
            ax.set_xlabel("rewind point (iteration)")
            for xi, r in zip(x, points):
                ax.annotate(
                    r["point"],
                    (xi, 100 * r["test_error_barrier"]["mean"]),
                    fontsize="x-small",
                    textcoords="offset points",
                    xytext=(3, 5),
                )
        ax.set_ylabel("error barrier (points)")
        ax.set_title(f"instability, {title}", fontsize="medium")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / "barrier_vs_point.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    if summary.get("successive"):
        rows = summary["successive"]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.errorbar(
            range(len(rows)),
            [100 * r["test_error_barrier"]["mean"] for r in rows],
            yerr=[100 * r["test_error_barrier"]["std"] for r in rows],
            fmt="o-",
            capsize=3,
        )
        ax.axhline(100 * summary["threshold"], color="k", linestyle=":", label="stability threshold")
        ax.set_xticks(
            range(len(rows)), [r["rounds"].replace("round_", "") for r in rows], rotation=45, fontsize="small"
        )
        ax.set_xlabel("successive rounds")
        ax.set_ylabel("test error barrier (points)")
        ax.set_title(f"barriers between successive tickets, {title}", fontsize="medium")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out_dir / "successive_barriers.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    if summary.get("search"):
        probes = sorted(summary["search"]["probes"], key=lambda p: p["iteration"])
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.errorbar(
            [p["iteration"] for p in probes],
            [100 * p["barrier"]["mean"] for p in probes],
            yerr=[100 * p["barrier"]["std"] for p in probes],
            fmt="o",
            capsize=3,
        )
        ax.axhline(100 * summary["threshold"], color="k", linestyle=":", label="stability threshold")
        found = summary["search"]["earliest_stable_iteration"]
        if found is not None:
            ax.axvline(found, color="g", linestyle="--", label=f"earliest stable: iteration {found}")
        ax.set_xlabel("rewind point (iteration)")
        ax.set_ylabel("mean test error barrier (points)")
        ax.set_title(f"bisection probes, {title}", fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / "search_probes.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_plant(summary: dict, out_dir) -> list[Path]:
    """The planting benchmark's figures, per task and depth: test performance against density, one line per pruner
    (mean +- std over the seeds), the planted ticket's performance as a horizontal line and its density as a
    vertical one; and the recall of the planted weights against density."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ref in summary["references"]:
        rows = [r for r in summary["rows"] if (r["task"], r["depth"]) == (ref["task"], ref["depth"])]
        dense = [r for r in rows if r["density_label"] == "1"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for pruner in dict.fromkeys(r["pruner"] for r in rows):
            mine = sorted(
                [r for r in rows if r["pruner"] == pruner] + [d for d in dense if d["pruner"] != pruner],
                key=lambda r: r["density"],
            )
            x = [r["density"] for r in mine]
            style = "s--" if mine and mine[0]["kind"] == "strong" else "o-"
            for ax, key in ((axes[0], "score"), (axes[1], "recall")):
                _line_with_band(
                    ax,
                    x,
                    [r[key]["mean"] for r in mine],
                    [r[key]["std"] for r in mine],
                    style,
                    alpha=0.12,
                    markersize=4,
                    label=pruner,
                )
        metric = "test MSE" if ref["metric"] == "mse" else "test accuracy"
        axes[0].axhline(ref["test"], color="k", linestyle=":", label="planted ticket")
        axes[0].axhline(ref["chance"], color="grey", linestyle="-.", label="chance")
        for ax in axes:
            ax.axvline(ref["planted_density"], color="k", linestyle="--", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("density (remaining weights / all)")
            ax.grid(True, which="both", alpha=0.3)
        if ref["metric"] == "mse":
            axes[0].set_yscale("log")
        axes[0].set_ylabel(metric)
        axes[1].set_ylabel("recall of the planted weights")
        axes[0].legend(fontsize="x-small", ncol=2)
        fig.suptitle(f"{ref['task']}, depth {ref['depth']} (dashed: the planted density)", fontsize="medium")
        fig.tight_layout()
        path = out_dir / f"plant_{ref['task']}_depth{ref['depth']}.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_probes(results: list[dict], out_dir) -> list[Path]:
    """Linear-probe test accuracy per probe point, one panel per round, a bar per network variant."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results) + 1.5, 3.8), squeeze=False)
    for ax, result in zip(axes[0], results):
        layers, variants = result["layers"], result["variants"]
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            ax.bar(
                [j + i * width for j in range(len(layers))],
                [100 * result["probes"][variant][layer]["test_accuracy"] for layer in layers],
                width,
                label=variant.replace("_", " "),
            )
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))], layers, fontsize="small", rotation=30)
        ax.set_title(f"round {result['round']} ({100 * result['sparsity']:.1f}% pruned)", fontsize="medium")
        ax.set_ylabel("probe test accuracy (%)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize="x-small")
    fig.tight_layout()
    path = out_dir / "probes.png"
    _save(fig, path)
    plt.close(fig)
    return [path]
