"""`cofe sweep`: a benchmark manifest sampled over a grid of identity controls, each point benched, the trade-off
plotted.

    cofe sweep --checkpoint cofe.safetensors --manifest bench.jsonl --out sweep/ \\
        --grid branch_scale=0.5,0.75,1 --grid window=0:1,0.3:1 --bench "--recognizer dlib"

Every point of the grid (the product of the ``--grid`` axes: ``branch_scale``, ``window``, ``blocks``, and
``identity`` / ``semantic`` / ``detail`` for per-expert gate weights) is sampled from the one loaded pipeline into
``OUT/<point>/`` (as ``cofe sample --manifest`` writes it: resumable, finished videos skipped) and scored by
``cofe bench`` into the MLflow experiment ``--experiment`` (a run per point, named ``sweep <point>``, its controls in
the run's parameters). ``OUT/sweep.md`` tables and ``OUT/sweep.png`` plots identity similarity against yaw coverage
(the share of sampled frames whose generated face is turned 30 degrees or more) and against motion: the trade-off a
user tunes, since a face held too tightly to the reference stays frontal and still.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from pathlib import Path

AXES = ("branch_scale", "window", "blocks", "identity", "semantic", "detail")


def parse_grid(specs: list[str]) -> list[dict[str, str]]:
    """``["branch_scale=0.5,1", "window=0:1,0.3:1"]`` -> the product, one ``{axis: value}`` per point."""
    axes: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep or name not in AXES or not values.strip():
            raise ValueError(f"--grid {spec!r}: give AXIS=V1,V2,... with AXIS one of {', '.join(AXES)}")
        if name in axes:
            raise ValueError(f"--grid names {name!r} twice")
        # blocks take ranges with commas inside one value: separate their values with ';' (e.g. 0-9;0-19).
        sep_values = ";" if name == "blocks" else ","
        axes[name] = [v.strip() for v in values.split(sep_values) if v.strip()]
    if not axes:
        return [{}]
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(axes[n] for n in names))]


def point_name(point: dict[str, str]) -> str:
    """A folder- and MLflow-safe name of a grid point, e.g. ``branch_scale-0.5_window-0.3-1``."""
    if not point:
        return "default"
    return "_".join(f"{k}-{v}".replace(":", "-").replace(",", "+").replace("/", "-") for k, v in point.items())


def controls_of(point: dict[str, str]):
    """The :class:`cofe_apps.pipeline.IdentityControls` of a grid point."""
    from cofe_apps.pipeline import IdentityControls
    from cofe_apps.sample import parse_blocks, parse_floats, parse_window

    experts = {k: float(point[k]) for k in ("identity", "semantic", "detail") if k in point}
    if experts:
        experts = {**{"identity": 1.0, "semantic": 1.0, "detail": 1.0}, **experts}
    return IdentityControls(
        branch_scale=parse_floats(point.get("branch_scale", "1"), "branch_scale"),
        expert_weights=experts or None,
        window=parse_window(point.get("window", "0:1")),
        blocks=parse_blocks(point["blocks"]) if "blocks" in point else None,
    )


def build_parser() -> argparse.ArgumentParser:
    from cofe_apps.helptext import HelpFormatter
    from cofe_apps.sample import build_parser as sample_parser

    p = argparse.ArgumentParser(prog="cofe sweep", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="AXIS=V1,V2",
        help=f"one axis of the grid ({', '.join(AXES)}; blocks values separated by ';'), repeatable (default: "
        "the default controls only)",
    )
    p.add_argument("--bench", default="", help="more `cofe bench` arguments, quoted (default: none)")
    p.add_argument("--experiment", default="cofe-sweep", help="MLflow experiment of the point runs")
    # Everything `cofe sample --manifest` takes, except what the grid sets.
    skip = {"--branch-scale", "--expert-weights", "--face-window", "--face-blocks", "--reference", "--prompt",
            "--first-frame", "--mlflow-run-id", "-h"}  # fmt: skip
    for action in sample_parser()._actions:
        if not action.option_strings or set(action.option_strings) & skip:
            continue
        kwargs = {"dest": action.dest, "default": action.default, "help": action.help}
        if action.nargs == 0:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=action.type, choices=action.choices)
        if action.dest in ("manifest",):
            kwargs.update(required=True, help="the `cofe bench` manifest to sample at every grid point (required)")
        if action.dest == "out":
            kwargs.update(help="folder: OUT/<point>/ videos, OUT/bench-<point>/, OUT/sweep.md, OUT/sweep.png "
                          "(required)")  # fmt: skip
        if action.required:
            kwargs["required"] = True
        p.add_argument(*action.option_strings, **kwargs)
    return p


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    try:
        points = parse_grid(a.grid)
        controls = [controls_of(pt) for pt in points]
        bench_extra = shlex.split(a.bench)
        from cofe_bench import read_manifest

        items = read_manifest(a.manifest)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cofe sweep: {exc}", file=sys.stderr)
        return 2
    from cofe_apps import bench
    from cofe_apps.compare import load_runs, tradeoff_plot, tradeoff_table
    from cofe_apps.sample import _load, _sample_manifest

    out = Path(a.out)
    a.face_window = "0:1"
    pipe = _load(a, 0, 1)
    if isinstance(pipe, int):
        return pipe
    names = []
    status = 0
    for point, ctrl in zip(points, controls, strict=True):
        name = point_name(point)
        names.append(f"sweep {name}")
        print(f"cofe sweep: point {name} ({len(names)}/{len(points)})", file=sys.stderr)
        a.out = str(out / name)
        a.mlflow_run_id = None
        status |= _sample_manifest(pipe, a, items, ctrl, 0, 1)
        code = bench.main(["--manifest", str(a.manifest), "--videos", str(out / name), "--out",
                           str(out / f"bench-{name}"), "--experiment", a.experiment, "--run-name", f"sweep {name}",
                           "--tracking-uri", a.tracking_uri, *bench_extra])  # fmt: skip
        if code:
            print(f"cofe sweep: cofe bench failed at point {name} (exit {code})", file=sys.stderr)
            return code
        _tag_point(a.tracking_uri, a.experiment, f"sweep {name}", point)
    rows = [r for r in load_runs(a.tracking_uri, a.experiment) if r["name"] in names]
    latest = {r["name"]: r for r in rows}  # a rerun's newer run wins
    rows = [latest[n] for n in names if n in latest]
    md = tradeoff_table(rows)
    (out / "sweep.md").write_text(md, encoding="utf-8")
    png = tradeoff_plot(rows, out / "sweep.png")
    print(md)
    print(f"table: {out / 'sweep.md'}  plot: {png}")
    return 1 if status else 0


def _tag_point(uri: str, experiment: str, run_name: str, point: dict[str, str]) -> None:
    """The grid point's controls as parameters of its (newest) bench run."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"attributes.run_name = '{run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
    if runs:
        client.log_batch(runs[0].info.run_id, params=[Param(f"control.{k}", v) for k, v in point.items()])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
