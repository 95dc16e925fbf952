"""`cofe demo`'s pipeline at its smallest size: inputs -> curate -> split -> precompute -> fit -> sample -> bench ->
compare, everything in one MLflow store."""

from __future__ import annotations

import json

import pytest
import webdataset as wds
from mlflow.tracking import MlflowClient

from cofe_apps.demo import DemoConfig, pick_bench_clusters, run_demo


@pytest.mark.slow
def test_demo_pipeline_smallest(tmp_path):
    cfg = DemoConfig(
        identities=5,
        clips_per_identity=1,
        seconds=1.5,
        bench_identities=2,
        size=64,
        frames=9,
        stride=1,
        train_steps=4,
        batch_size=2,
        sample_steps=2,
        workers=0,
        real_clip=False,
    )
    out = tmp_path / "demo"
    summary = run_demo(out, cfg)
    assert set(summary["timings_s"]) == {
        "inputs", "curate", "split", "precompute", "fit", "sample", "bench", "compare", "total"
    }  # fmt: skip

    # Curation rejected each composed bad clip at the face stage and kept the turning faces.
    report = json.loads((out / "curated" / "report.json").read_text())
    decisions = {r["source"].rsplit("/", 1)[-1]: r for r in report["inputs"]}
    for kind in ("two_faces", "no_face", "tiny"):
        assert decisions[f"reject-{kind}.mp4"]["decision"] == "rejected", decisions[f"reject-{kind}.mp4"]
    assert report["counts"]["clips_kept"] >= 4

    # The benchmark identities never reach training.
    held_out = set(summary["held_out_clusters"])
    assert len(held_out) == 2 and summary["bench_items"] == 2
    train = [
        s
        for p in sorted((out / "train").glob("*.tar"))
        for s in wds.WebDataset(str(p), shardshuffle=False, empty_check=False)
    ]
    assert train and not {str(json.loads(s["json"])["identity_cluster"]) for s in train} & held_out

    for label in ("trained", "untrained"):
        assert len(list((out / "samples" / label).glob("*.mp4"))) == 2

    client = MlflowClient(summary["tracking_uri"])
    demo_runs = client.search_runs([client.get_experiment_by_name("cofe-demo").experiment_id])
    names = {r.info.run_name for r in demo_runs}
    assert "demo" in names and len(demo_runs) == 2  # the fit run and the demo run
    fit = next(r for r in demo_runs if r.info.run_name != "demo")
    assert "train/loss" in fit.data.metrics
    demo = next(r for r in demo_runs if r.info.run_name == "demo")
    logged = {a.path for a in client.list_artifacts(demo.info.run_id)}
    assert {"curation", "precompute", "benchset", "samples", "compare", "summary.json"} <= logged
    bench_runs = client.search_runs([client.get_experiment_by_name("cofe-demo-bench").experiment_id])
    assert len(bench_runs) == 3
    table = (out / "compare" / "compare.md").read_text()
    assert all(name in table for name in ("real clips", "untrained", "trained"))


def test_bench_clusters_are_spread_and_need_enough_identities(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"identity_cluster": c}) + "\n" for c in (0, 0, 1, 2, 3, 4, 5, 6)))
    assert pick_bench_clusters(data, 2) == (["2", "4"], ["0", "1", "3", "5", "6"])
    with pytest.raises(RuntimeError, match="kept 7 identities"):
        pick_bench_clusters(data, 7)
