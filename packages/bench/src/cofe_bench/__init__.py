"""Identity, semantic and quality metrics for face video generation, by head-pose bin.

``protocol="consisid"`` and ``protocol="opens2v"`` reproduce the field's published evaluations; ``protocol="cofe"``
is stricter (frames without a face count as 0, detection rate, set-level FID, per-yaw-bin metrics by the target
pose, identity drift, motion, an evaluation recogniser independent of the conditioning one).

Names are imported on first use (PEP 562), so ``import cofe_bench`` and its light parts (``cofe_bench.protocol``)
do not pull in torch: a command-line ``--help`` that only needs the protocol names answers at once.
"""

from __future__ import annotations

import importlib

__version__ = "0.3.0"

# public name -> module that defines it
_EXPORTS = {
    "CLIPScorer": "clipscore",
    "CurricularFace": "curricularface",
    "IRBackbone": "curricularface",
    "load_backbone_state": "curricularface",
    "DlibRecognizer": "dlib_face",
    "dlib_similarity": "dlib_face",
    "METRICS": "evaluator",
    "Evaluator": "evaluator",
    "FrameRecord": "evaluator",
    "ItemResult": "evaluator",
    "ReferenceFeatures": "evaluator",
    "DetectedFace": "faces",
    "detect_largest": "faces",
    "pad_image": "faces",
    "frechet_distance": "fid",
    "gaussian_stats": "fid",
    "pair_distance": "fid",
    "set_fid": "fid",
    "InceptionFeatures": "inception",
    "ManifestItem": "manifest",
    "ManifestProblem": "manifest",
    "build_lafid_manifest": "manifest",
    "build_vip_manifest": "manifest",
    "curated_yaw_track": "manifest",
    "load_image_rgb": "manifest",
    "read_manifest": "manifest",
    "scan_manifest": "manifest",
    "write_manifest": "manifest",
    "PROTOCOLS": "protocol",
    "RECOGNIZERS": "protocol",
    "BenchConfig": "protocol",
    "ProtocolCheck": "protocol",
    "TargetPose": "protocol",
    "clip_frame_indices": "protocol",
    "face_frame_indices": "protocol",
    "aggregate": "report",
    "flat_metrics": "report",
    "markdown_table": "report",
    "plot_by_yaw": "report",
    "write_report": "report",
    "VideoError": "video",
    "motion_magnitude": "video",
    "read_video": "video",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cofe_bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cofe_bench.{module}"), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return __all__
