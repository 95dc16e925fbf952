"""Head pose on real photos: the offline estimators against dlib's 68-point pose, mirror symmetry, and cost.

Real faces have no known pose, so two checks stand in for ground truth:

* **agreement with a 68-point pose**: dlib's 68 landmarks with insightface's mean 3D face fitted (51 inner
  points, weak perspective), made mirror-consistent like the renderer's (``heads.photo_pose``);
* **mirror symmetry**: ``yaw(mirrored image) = -yaw``; the table reports ``|yaw + yaw(mirrored)|``.

Faces: the six people of insightface's ``t1.jpg``, scikit-image's astronaut, matplotlib's Grace Hopper and
insightface's Tom Hanks crop. Also times the default estimator per face and the whole offline analysis per frame.

    .venv/bin/python packages/encoders/benchmarks/validate_real.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heads import landmarks68, photo, photo_pose


def _faces(name: str):
    img = photo(name)
    out = []
    lms = landmarks68(img)
    if name == "t1":
        lms = sorted(lms, key=lambda lm: lm[:, 0].min())
    else:
        lms = lms[:1]
    for i, lm in enumerate(lms):
        out.append((f"{name}-{i}" if name == "t1" else name, img, lm))
    return out


def main() -> None:
    from cofe_encoders.face import OfflineFaceAnalyzer, correct_yaw, estimate_head_pose

    raw_an = OfflineFaceAnalyzer(pose="offline-raw")
    rows = []
    for name in ("t1", "astronaut", "hopper", "hanks"):
        for ident, img, lm in _faces(name):
            ref_yaw = photo_pose(img, lm)[0]
            centre = lm.mean(0)
            faces = raw_an.analyze(img, embed=False)
            face = min(faces, key=lambda f: float(np.linalg.norm(f.kps5.mean(0) - centre)))
            mirrored = np.ascontiguousarray(img[:, ::-1])
            centre_m = np.array([img.shape[1] - 1 - centre[0], centre[1]])
            face_m = min(raw_an.analyze(mirrored, embed=False), key=lambda f: np.linalg.norm(f.kps5.mean(0) - centre_m))
            raw, raw_m = face.yaw, face_m.yaw
            rows.append(
                (ident, ref_yaw, raw, correct_yaw(raw), abs(raw + raw_m), abs(correct_yaw(raw) + correct_yaw(raw_m)))
            )
    print("| face | dlib-68 yaw | offline-raw | offline | raw - 68 | offline - 68 | mirror raw | mirror offline |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for ident, ref, raw, cor, mr, mc in rows:
        cells = [f"{ref:+.1f}", f"{raw:+.1f}", f"{cor:+.1f}", f"{raw - ref:+.1f}", f"{cor - ref:+.1f}"]
        print(f"| {ident} | " + " | ".join(cells) + f" | {mr:.1f} | {mc:.1f} |")
    arr = np.array([r[1:] for r in rows])
    turned = np.abs(arr[:, 0]) >= 15
    err_raw, err_cor = np.abs(arr[:, 1] - arr[:, 0]), np.abs(arr[:, 2] - arr[:, 0])
    print(
        f"\nmean |est - dlib68|: raw {err_raw.mean():.1f}, offline {err_cor.mean():.1f}; on faces turned >= 15 deg "
        f"({int(turned.sum())}): raw {err_raw[turned].mean():.1f}, offline {err_cor[turned].mean():.1f}"
    )
    print(f"mean mirror asymmetry |yaw + yaw(mirror)|: raw {arr[:, 3].mean():.1f}, offline {arr[:, 4].mean():.1f}")

    # Cost: the default estimator per face, and the whole offline analysis of one frame (one face).
    kps = [f.kps5 for f in raw_an.analyze(photo("t1"), embed=False)]
    n = 200
    t0 = time.perf_counter()
    for i in range(n):
        correct_yaw(estimate_head_pose(kps[i % len(kps)]).yaw)
    per_face = (time.perf_counter() - t0) / n * 1000
    frame = photo("astronaut")
    raw_an.analyze(frame, embed=False)
    t0 = time.perf_counter()
    for _ in range(20):
        raw_an.analyze(frame, embed=False)
    per_frame = (time.perf_counter() - t0) / 20 * 1000
    print(
        f"cost: offline pose {per_face:.2f} ms per face; offline analysis (YuNet + upright re-detection + pose) "
        f"{per_frame:.1f} ms per 512x512 frame with one face, embed=False (pose = {100 * per_face / per_frame:.1f} %)"
    )


if __name__ == "__main__":
    main()
