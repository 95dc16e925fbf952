"""`cofe compare`: benchmark runs side by side from MLflow, as a Markdown table and a plot.

Reads every finished run of the experiment that `cofe bench` logged to (or the ones named with --runs), prints the
headline metrics side by side and writes OUT/compare.md, OUT/compare.png (each metric per yaw bin) and
OUT/compare_tradeoff.png (identity similarity against yaw coverage and against motion, one point per run).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HEADLINE = ("facesim_arc", "facesim_dlib", "facesim_cur", "clipscore", "fid", "fid_set", "detection_rate",
            "id_frame_sim", "motion")  # fmt: skip
PLOTTED = ("facesim_arc", "facesim_dlib", "facesim_cur", "clipscore", "fid", "detection_rate")
# Per yaw bin in the table: identity (whichever recogniser scored it) and the detection rate.
PER_BIN = ("facesim_arc", "facesim_dlib", "detection_rate")


def build_parser() -> argparse.ArgumentParser:
    from cofe_apps.helptext import HelpFormatter

    p = argparse.ArgumentParser(prog="cofe compare", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--experiment", default="cofe-bench", help="MLflow experiment of the `cofe bench` runs")
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="MLflow tracking URI ($MLFLOW_TRACKING_URI when set, as for cofe fit)",
    )
    p.add_argument("--runs", nargs="*", help="run ids or names to keep (default: all finished runs)")
    p.add_argument("--out", type=Path, default=Path("compare"), help="folder for compare.md and compare.png")
    return p


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def load_runs(tracking_uri: str, experiment: str, keep: list[str] | None = None) -> list[dict]:
    """Finished bench runs of ``experiment``, oldest first: name, id, protocol and metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)
    rows = []
    for run in runs:
        name = run.info.run_name or run.info.run_id[:8]
        if keep and run.info.run_id not in keep and name not in keep:
            continue
        rows.append(
            {
                "name": name,
                "id": run.info.run_id,
                "protocol": run.data.params.get("protocol", "?"),
                "metrics": dict(run.data.metrics),
            }
        )
    return rows


def bins_of(rows: list[dict]) -> list[str]:
    """Yaw-bin suffixes present in the runs' metric names, in first-seen order (``yaw_lt30``, ...)."""
    seen: list[str] = []
    for row in rows:
        for key in row["metrics"]:
            if key.split("/", 1)[0] in PER_BIN and "/" in key:
                b = key.split("/", 1)[1]
                if b not in seen:
                    seen.append(b)
    return seen


def table(rows: list[dict]) -> str:
    """Markdown: one row per run, headline metrics then identity and detection rate per yaw bin (columns that no run
    has are left out)."""
    bins = bins_of(rows)
    cols = [*HEADLINE, *[f"{m}/{b}" for m in PER_BIN for b in bins]]
    cols = [c for c in cols if any(c in r["metrics"] for r in rows)]
    lines = ["| run | protocol | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 2)]
    for r in rows:
        lines.append(f"| {r['name']} | {r['protocol']} | " + " | ".join(_fmt(r["metrics"].get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    """One panel per metric: its value per yaw bin, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = bins_of(rows)
    metrics = [m for m in PLOTTED if any(k.startswith(m + "/") for r in rows for k in r["metrics"])] or ["facesim_arc"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), dpi=100, squeeze=False)
    axes = axes[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for r in rows:
            ys = [r["metrics"].get(f"{metric}/{b}", np.nan) for b in bins]
            ax.plot(bins, ys, marker="o", label=f"{r['name']} ({r['protocol']})")
        ax.set_title(metric + (" (lower is better)" if metric == "fid" else ""), fontsize=9)
        ax.set_xlabel("yaw bin")
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def yaw_coverage(metrics: dict[str, float]) -> float | None:
    """Share of sampled frames whose generated face is at |yaw| >= 30 degrees (bench's per-generated-yaw bins)."""
    shares = {k.rsplit("/", 1)[1]: v for k, v in metrics.items() if k.startswith("by_generated_yaw/frame_share/")}
    if not shares:
        return None
    return float(sum(v for b, v in shares.items() if b != "yaw_lt30"))


def identity_metric(metrics: dict[str, float]) -> str | None:
    return next((m for m in ("facesim_arc", "facesim_dlib", "facesim_cur") if m in metrics), None)


def tradeoff_table(rows: list[dict]) -> str:
    lines = ["| point | identity | facesim | yaw coverage (>= 30 deg) | motion | detection rate |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        m = r["metrics"]
        key = identity_metric(m)
        cov = yaw_coverage(m)

        def f(v):
            return "–" if v is None else f"{v:.4f}"

        lines.append(f"| {r['name']} | {key or '–'} | {f(m.get(key)) if key else '–'} | {f(cov)} | "
                     f"{f(m.get('motion'))} | {f(m.get('detection_rate'))} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def tradeoff_plot(rows: list[dict], path: Path) -> Path:
    """Identity similarity against yaw coverage and against motion, one labelled point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    for ax, (xname, xof) in zip(axes, (("yaw coverage (share of frames at |yaw| >= 30)", yaw_coverage),
                                       ("motion", lambda m: m.get("motion"))), strict=True):  # fmt: skip
        for r in rows:
            m = r["metrics"]
            key = identity_metric(m)
            x, y = xof(m), m.get(key) if key else None
            if x is None or y is None:
                continue
            ax.scatter([x], [y])
            ax.annotate(r["name"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(xname, fontsize=8)
        ax.set_ylabel("identity similarity", fontsize=8)
    fig.suptitle("identity vs pose freedom, per control setting", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = load_runs(args.tracking_uri, args.experiment, args.runs)
    except ValueError as exc:
        print(f"cofe compare: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"cofe compare: no runs in experiment {args.experiment!r}", file=sys.stderr)
        return 2
    md = table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(md, encoding="utf-8")
    png = plot(rows, args.out / "compare.png")
    # Identity against pose freedom (yaw coverage, motion): the trade-off the identity controls tune.
    trade = tradeoff_plot(rows, args.out / "compare_tradeoff.png")
    print(md)
    print(f"table: {args.out / 'compare.md'}  plots: {png}, {trade}")
    return 0
