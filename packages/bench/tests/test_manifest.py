"""Manifest I/O and the VIP / LaFID-Bench-style set builders."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from cofe_bench import BenchConfig, ManifestItem, build_lafid_manifest, build_vip_manifest, read_manifest
from cofe_bench.manifest import scan_manifest, write_manifest
from cofe_bench.testing import faceless_frames, write_video


def test_roundtrip_and_relative_paths(tmp_path):
    items = [
        ManifestItem("a", "refs/a.png", "a prompt", first_frame="first/a.png", video="a.mp4", extra={"yaw_bin": "x"}),
        ManifestItem("b", "/abs/b.png", "b prompt"),
    ]
    path = write_manifest(items, tmp_path / "m" / "manifest.jsonl")
    back = read_manifest(path)
    assert back[0].reference == str(tmp_path / "m" / "refs" / "a.png")
    assert back[0].first_frame == str(tmp_path / "m" / "first" / "a.png")
    assert back[0].extra == {"yaw_bin": "x"} and back[0].video_name == "a.mp4"
    assert back[1].reference == "/abs/b.png" and back[1].video_name == "b.mp4" and back[1].first_frame is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": "a", "reference": "r.png"}\n', r"m\.jsonl:1: missing field\(s\) \['prompt'\]"),
        ('{"id": "a", "reference": "r", "prompt": ""}\n{"id": "a", "reference": "r", "prompt": ""}\n', "2: duplicate"),
        ("\n[1, 2]\n", r"m\.jsonl:2: expected a JSON object"),
        ("{nope\n", r"m\.jsonl:1: not valid JSON"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path, text, message):
    (tmp_path / "m.jsonl").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path / "m.jsonl")


def test_scan_records_every_bad_line(tmp_path):
    lines = [
        '{"id": "a", "reference": "r.png", "prompt": "ok"}',
        "{nope",
        '{"id": "b", "prompt": "no reference"}',
        '{"id": "a", "reference": "r.png", "prompt": "again"}',
        "[1]",
        '{"id": "c", "reference": "/abs/c.png", "prompt": "ok"}',
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    items, problems = scan_manifest(tmp_path / "m.jsonl")
    assert [i.id for i in items] == ["a", "c"] and items[0].reference == str(tmp_path / "r.png")
    assert [(p.line, p.id) for p in problems] == [(2, "m.jsonl:2"), (3, "b"), (4, "a@line4"), (5, "m.jsonl:5")]
    assert "m.jsonl:3: missing field(s) ['reference']" in problems[1].error
    assert len({i.id for i in items} | {p.id for p in problems}) == 6  # every line keeps a distinct id


def test_vip_layout(tmp_path, faces):
    root = tmp_path / "vip"
    for ident, face in (("0001", faces["p0"]), ("0002", faces["p3"])):
        (root / ident).mkdir(parents=True)
        Image.fromarray(face).save(root / ident / "portrait.jpg")
        for k in range(1, 6):
            (root / ident / f"prompt{k}.txt").write_text(f"person {ident} does thing {k}\n")
    (root / "empty").mkdir()
    items = build_vip_manifest(root, tmp_path / "vip.jsonl")
    assert len(items) == 10 and items[0].id == "0001_p1" and items[-1].id == "0002_p5"
    back = read_manifest(tmp_path / "vip.jsonl")
    assert back[6].prompt == "person 0002 does thing 2" and back[6].video_name == "0002_p2.mp4"
    assert back[6].reference == str(tmp_path / "vip" / "0002" / "portrait.jpg")
    with pytest.raises(ValueError, match="no identity folder"):
        build_vip_manifest(root / "empty", tmp_path / "x.jsonl")


def _shard(path, samples, tmp_path):
    with tarfile.open(path, "w") as tar:
        for key, meta, ref in samples:
            video = write_video(faceless_frames(3, 32), tmp_path / f"{key}.mp4").read_bytes()
            buf = io.BytesIO()
            Image.fromarray(ref).save(buf, format="PNG")
            for ext, data in (("mp4", video), ("json", json.dumps(meta).encode()), ("ref.png", buf.getvalue())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_lafid_builder_identity_disjoint_and_balanced(tmp_path):
    ref = np.zeros((112, 112, 3), np.uint8)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(12):
        peak = [10, 45, 75][i % 3]  # max |yaw| of the clip decides its bin
        yaws = [float(rng.uniform(-5, 5)), float(peak * (1 if i % 2 else -1))]
        meta = {
            "faces": [{"frame": f, "yaw": y} for f, y in enumerate(yaws)],
            "identity_cluster": f"id{i % 6}",  # two clips per identity
            "caption": f"clip {i}",
            "source": "test",
        }
        samples.append((f"clip{i:03d}", meta, ref))
    _shard(tmp_path / "s0.tar", samples[:6], tmp_path)
    _shard(tmp_path / "s1.tar", samples[6:], tmp_path)
    out = tmp_path / "lafid"
    items = build_lafid_manifest(
        [tmp_path / "s0.tar", tmp_path / "s1.tar"], out, exclude_clusters=["id0"], per_bin=1, config=BenchConfig()
    )
    clusters = [it.extra["identity_cluster"] for it in items]
    assert "id0" not in clusters and len(set(clusters)) == len(clusters)  # disjoint from training, one per identity
    assert [it.extra["yaw_bin"] for it in items] == ["|yaw|<30", "30-60", ">60"]
    back = read_manifest(out / "manifest.jsonl")
    for it in back:
        assert (out / "refs" / f"{it.id}.png").is_file() and (out / "real" / f"{it.id}.mp4").is_file()
        assert np.asarray(Image.open(it.first_frame)).shape == (32, 32, 3)
        # the target pose: the curated track at each of the clip's 3 frames (faces at frames 0 and 1, then held)
        meta = next(m for k, m, _ in samples if k == it.id)
        y0, y1 = (f["yaw"] for f in meta["faces"])
        assert it.target_yaw == pytest.approx([y0, y1, y1], abs=0.01)
        assert it.target_video == str(out / "real" / f"{it.id}.mp4")
    with pytest.raises(FileNotFoundError, match=r"missing\.tar"):
        build_lafid_manifest([tmp_path / "missing.tar"], out)


def test_curated_yaw_track_interpolates_missed_frames():
    from cofe_bench import curated_yaw_track

    meta = {"faces": [{"frame": 1, "yaw": 10.0}, {"frame": 3, "yaw": 50.0}, {"frame": 4, "yaw": None}]}
    assert curated_yaw_track(meta, 6) == [10.0, 10.0, 30.0, 50.0, 50.0, 50.0]
    assert curated_yaw_track({"faces": []}, 6) is None
    with pytest.raises(ValueError, match=r"clip\.json: faces\[\]\.frame spans 1-9"):
        curated_yaw_track({"faces": [{"frame": 1, "yaw": 0}, {"frame": 9, "yaw": 1}]}, 6, where="clip.json")


def test_target_fields_roundtrip_and_are_checked(tmp_path):
    item = ManifestItem("a", "r.png", "p", target_yaw=[0.0, None, 45.5], target_video="real/a.mp4")
    path = write_manifest([item, ManifestItem("b", "r.png", "p")], tmp_path / "m.jsonl")
    lines = path.read_text().splitlines()
    assert "target_yaw" not in lines[1]  # optional fields are written only when known
    a, b = read_manifest(path)
    assert a.target_yaw == [0.0, None, 45.5] and a.target_video == str(tmp_path / "real" / "a.mp4")
    assert b.target_yaw is None and b.target_video is None and "target_yaw" not in a.extra
    bad = [
        '{"id": "x", "reference": "r", "prompt": "p", "target_yaw": 30}',
        '{"id": "y", "reference": "r", "prompt": "p", "target_yaw": ["left"]}',
        '{"id": "z", "reference": "r", "prompt": "p", "target_yaw": [null]}',
        '{"id": "w", "reference": "r", "prompt": "p", "target_yaw": [400]}',
    ]
    (tmp_path / "bad.jsonl").write_text("\n".join(bad) + "\n")
    items, problems = scan_manifest(tmp_path / "bad.jsonl")
    assert items == [] and [p.id for p in problems] == ["x", "y", "z", "w"]
    assert "bad.jsonl:1: target_yaw must be a non-empty list" in problems[0].error
    assert "non-numbers" in problems[1].error and "no known yaw" in problems[2].error and "180" in problems[3].error
