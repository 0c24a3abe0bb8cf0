"""The evaluation report: plots (matplotlib, optional) and summary.md.

Both read only the results dict (the one :func:`elastictok.evaluation.evaluate` also writes to
results.json), never the model or the inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elastictok.utils.files import atomic_path, write_text

__all__ = ["GAIN_DEFINITION", "write_plots", "write_summary"]


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp)
    plt.close(fig)
    return path


def _plot_token_share(results: dict, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    unit = "blocks" if results["settings"]["kind"] == "video" else "images"
    paths = []
    for key, entry in results["token_share"].items():
        fig, ax = plt.subplots(figsize=(5.2, 4), dpi=110)
        for name, color in (("adaptive", "#4c78a8"), ("uniform", "#e45756")):
            pts = np.asarray(entry[name])
            ax.plot(pts[:, 0] * 100, pts[:, 1] * 100, color=color, marker=".", label=f"{name} (same model)")
        for name, b in entry["baselines"].items():
            ax.scatter([b["point"][0] * 100], [b["point"][1] * 100], marker="*", s=140, zorder=3,
                       label=f"fixed baseline {name}")
        gain = entry["gains"]["at_uniform_full"]["gain"]
        ax.set_title(f"block MSE <= {key}" + (f": {gain:.2f}x fewer tokens" if gain else ""))
        ax.set_xlabel("tokens used (% of all)")
        ax.set_ylabel(f"{unit} meeting the threshold (%)")
        ax.set_xlim(0, 100)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        paths.append(_save(fig, out / f"token_share_mse{key}.png"))
    return paths


def _plot_quality(results: dict, out: Path) -> Path:
    import matplotlib.pyplot as plt

    q = results["quality"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110)
    for ax, metric in zip(axes, ("psnr", "ssim", "lpips")):
        uni = [(r["token_share"], r[metric]) for r in q["uniform"].values() if r[metric] is not None]
        if uni:
            xs, ys = zip(*sorted(uni))
            ax.plot(np.asarray(xs) * 100, ys, color="#e45756", marker="o", label="uniform")
        ada = [(k, r["token_share"], r[metric]) for k, r in q["adaptive"].items() if r[metric] is not None]
        for k, x, y in ada:
            ax.scatter([x * 100], [y], color="#4c78a8", zorder=3)
            ax.annotate(f"MSE<={k}", (x * 100, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for name, r in q["baselines"].items():
            if r[metric] is not None:
                ax.scatter([r["token_share"] * 100], [r[metric]], marker="*", s=120, label=f"baseline {name}")
        ax.set_xlabel("tokens used (% of all)")
        ax.set_ylabel(metric.upper())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, out / "quality_vs_tokens.png")


def _plot_codecs(results: dict, out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    codecs = results["codecs"]
    if not codecs:
        return None
    methods = sorted({m for entry in codecs.values() for m in entry})
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110)
    for ax, metric in zip(axes, ("psnr", "ssim", "lpips")):
        for method in methods:
            pts = sorted((e[method]["bpp"], e[method][metric]) for e in codecs.values()
                         if method in e and e[method][metric] is not None and e[method]["bpp"] is not None)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=method)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(metric.upper())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, out / "codecs.png")


def _plot_token_use(results: dict, out: Path) -> Path:
    import matplotlib.pyplot as plt

    keys = list(results["quality"]["adaptive"])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4), dpi=110, squeeze=False)
    video = results["settings"]["kind"] == "video"
    for ax, key in zip(axes[0], keys):
        for it in results["items"]:
            share = np.asarray(it["adaptive"][key]["tokens"]) / it["tokens_per_block"] * 100
            if video:
                ax.plot(np.arange(len(share)), share, marker=".", label=it["name"])
        if video:
            ax.set_xlabel("block (time)")
            ax.set_ylabel("tokens kept (% of block)")
            if len(results["items"]) <= 8:
                ax.legend(fontsize=7)
        else:
            shares = [it["adaptive"][key]["tokens"][0] / it["tokens_per_block"] * 100 for it in results["items"]]
            ax.hist(shares, bins=20, range=(0, 100), color="#4c78a8")
            ax.set_xlabel("tokens kept (% of image)")
            ax.set_ylabel("images")
        ax.set_title(f"adaptive, block MSE <= {key}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    return _save(fig, out / "token_use.png")


def write_plots(results: dict, out: Path) -> list[Path]:
    """token_share_mse<T>.png, quality_vs_tokens.png, codecs.png, token_use.png (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        results["notes"].append("plots skipped: matplotlib is not installed (pip install 'elastictok[plot]')")
        return []
    paths = [*_plot_token_share(results, out), _plot_quality(results, out), _plot_token_use(results, out)]
    codecs = _plot_codecs(results, out)
    return [p for p in [*paths, codecs] if p is not None]


GAIN_DEFINITION = (
    "For each curve, the token share needed to reach a share s of blocks meeting the threshold is read "
    "where the curve (points sorted by token share) first reaches s, interpolating linearly between the "
    "neighbouring points. The gain is (tokens uniform, or the baseline, needs) / (tokens adaptive needs) at "
    "the same s: s = the share uniform reaches at full tokens (headline), 50% and 80%, and for a baseline the "
    "share it reaches. Adaptive = per block the fewest grid count meeting the threshold, capped (fallback: the "
    "cap), swept over caps; uniform = the same count in every block. Both come from per-block MSE measured at "
    "every grid count with fixed-count coding (video blocks conditioned on earlier blocks at the same count)."
)


def _summary_lines(results: dict) -> list[str]:
    s = results["settings"]
    unit = "blocks" if s["kind"] == "video" else "images"
    sizes = sorted({tuple(it["frame_size"]) for it in results["items"]})
    lines = [
        "# ElasticTok evaluation", "",
        f"Model: `{s['model'] or 'in-memory'}` ({s['config']['bottleneck']}); {s['items']} {s['kind']}s at "
        + ", ".join(f"{h}x{w}" for h, w in sizes)
        + (f", {s['options']['frames']} frames each" if s["kind"] == "video" else "")
        + f"; {len(s['grid_fractions'])} token counts per block measured; {s['seconds']:.0f} s.", "",
        f"## Token efficiency (share of {unit} whose block MSE meets the threshold)", "",
        "| MSE threshold | uniform share at full tokens | uniform tokens | adaptive tokens | gain | gain at 50% "
        "| gain at 80% |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, e in results["token_share"].items():
        g = e["gains"]
        head = g["at_uniform_full"]
        lines.append(
            f"| {key} | {_fmt(e['uniform_share_at_full_tokens'] * 100, '.1f', '%')} | "
            f"{_fmt(head['reference_tokens'] and head['reference_tokens'] * 100, '.1f', '%')} | "
            f"{_fmt(head['adaptive_tokens'] and head['adaptive_tokens'] * 100, '.1f', '%')} | "
            f"{_fmt(head['gain'], '.2f', 'x')} | {_fmt(g['at_50']['gain'], '.2f', 'x')} | "
            f"{_fmt(g['at_80']['gain'], '.2f', 'x')} |"
        )
    baseline_rows = [(key, name, b) for key, e in results["token_share"].items() for name, b in e["baselines"].items()]
    if baseline_rows:
        lines += ["", "| MSE threshold | fixed baseline | its tokens | share meeting "
                      "| adaptive tokens at that share | gain |",
                  "|---|---|---|---|---|---|"]
        for key, name, b in baseline_rows:
            lines.append(f"| {key} | {name} (fraction {b['fraction']:g}) | {b['point'][0] * 100:.1f}% | "
                         f"{b['point'][1] * 100:.1f}% | "
                         f"{_fmt(b['gain']['adaptive_tokens'] and b['gain']['adaptive_tokens'] * 100, '.1f', '%')} | "
                         f"{_fmt(b['gain']['gain'], '.2f', 'x')} |")
    lines += ["", f"Definition: {GAIN_DEFINITION}", ""]
    q = results["quality"]
    lines += ["## Quality at token budgets", "",
              "| allocation | tokens (% of all) | PSNR (dB) | SSIM | LPIPS | FVD |", "|---|---|---|---|---|---|"]
    rows = [(f"uniform, {label} tokens per block", r) for label, r in q["uniform"].items()]
    rows += [(f"adaptive, block MSE <= {k}", r) for k, r in q["adaptive"].items()]
    rows += [(f"fixed baseline {k}", r) for k, r in q["baselines"].items()]
    for name, r in rows:
        lines.append(f"| {name} | {_fmt(r['token_share'] and r['token_share'] * 100, '.1f', '%')} | "
                     f"{_fmt(r['psnr'])} | {_fmt(r['ssim'], '.4f')} | {_fmt(r['lpips'], '.4f')} | "
                     f"{_fmt(r['fvd'], '.1f')} |")
    if results["codecs"]:
        lines += ["", "## Codecs at equal bytes (the size of each item's .etok file)", "",
                  "| MSE threshold | method | bytes | bpp | PSNR (dB) | SSIM | LPIPS | FVD | within 5% of target |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, entry in results["codecs"].items():
            for method, r in entry.items():
                within = _fmt(r["within_tolerance"] * 100, ".0f", "% of items") if "within_tolerance" in r else ""
                lines.append(f"| {key} | {method} | {_fmt(r['bytes'], '.0f')} | {_fmt(r['bpp'], '.3f')} | "
                             f"{_fmt(r['psnr'])} | {_fmt(r['ssim'], '.4f')} | {_fmt(r['lpips'], '.4f')} | "
                             f"{_fmt(r['fvd'], '.1f')} | {within} |")
    lines += ["", "## Notes", "", *(f"- {n}" for n in results["notes"]), ""]
    return lines


def write_summary(results: dict, path: Path) -> Path:
    """The Markdown summary: token-efficiency gains, quality at budgets, codec comparison, notes."""
    return write_text(path, "\n".join(_summary_lines(results)))
