"""Identity, semantic and quality metrics for face video generation, by head-pose bin.

``protocol="consisid"`` reproduces the field's published evaluation; ``protocol="cofe"`` is stricter (frames
without a face count as 0, detection rate, set-level FID, per-yaw-bin metrics, identity drift, motion).
"""

from cofe_bench.clipscore import CLIPScorer
from cofe_bench.curricularface import CurricularFace, IRBackbone, load_backbone_state
from cofe_bench.evaluator import METRICS, Evaluator, FrameRecord, ItemResult, ReferenceFeatures
from cofe_bench.faces import DetectedFace, detect_largest, pad_image
from cofe_bench.fid import frechet_distance, gaussian_stats, pair_distance, set_fid
from cofe_bench.inception import InceptionFeatures
from cofe_bench.manifest import (
    ManifestItem,
    ManifestProblem,
    build_lafid_manifest,
    build_vip_manifest,
    load_image_rgb,
    read_manifest,
    scan_manifest,
    write_manifest,
)
from cofe_bench.protocol import BenchConfig, clip_frame_indices, face_frame_indices
from cofe_bench.report import aggregate, flat_metrics, markdown_table, plot_by_yaw, write_report
from cofe_bench.video import VideoError, motion_magnitude, read_video

__version__ = "0.2.0"

__all__ = [
    "METRICS",
    "BenchConfig",
    "CLIPScorer",
    "CurricularFace",
    "DetectedFace",
    "Evaluator",
    "FrameRecord",
    "IRBackbone",
    "InceptionFeatures",
    "ItemResult",
    "ManifestItem",
    "ManifestProblem",
    "ReferenceFeatures",
    "VideoError",
    "__version__",
    "aggregate",
    "build_lafid_manifest",
    "build_vip_manifest",
    "clip_frame_indices",
    "detect_largest",
    "face_frame_indices",
    "flat_metrics",
    "frechet_distance",
    "gaussian_stats",
    "load_backbone_state",
    "load_image_rgb",
    "markdown_table",
    "motion_magnitude",
    "pad_image",
    "pair_distance",
    "plot_by_yaw",
    "read_manifest",
    "read_video",
    "scan_manifest",
    "set_fid",
    "write_manifest",
    "write_report",
]
