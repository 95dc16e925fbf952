"""Heads at known angles, rendered from real photo textures: the ground truth of the pose benchmark.

Why: no offline data set gives faces of known pose out to 90 degrees of yaw, and the photos that ship in wheels
are near-frontal. So each real face is re-posed: dlib's 68 landmarks on the photo, insightface's mean 3D face of
that layout (``cofe_encoders.face.pose.MEAN_FACE_68``) fitted to them, a head built around it, textured with the
photo and rendered at the target rotation.

The head (units of the mean face: about 10.5 cm; head frame x right, y down, z *towards* the camera while it is
built, frontal at zero) is the union of three closed solids, so a z-buffer renders their union exactly:

* **the face**: a dense surface through the identity's 68 landmarks (their photo x, y; depth from the mean face,
  interpolated with a thin-plate spline), closed by a back plane at ``z = -0.45`` and side walls. Its edge is the
  jaw contour and brows: at profile this gives the forehead-nose-lips-chin silhouette and the jaw line;
* **the cranium**: an ellipsoid (semi-axes 0.72 x 0.92 x 0.95, centre ``(0, -0.65, -0.62)``) chosen to pass behind
  the eyes and through the ear ends of the jaw contour, with head height chin-to-vertex 2.15 (23 cm) and depth
  nose-to-back 2.2 (23 cm), as adult heads measure. Front texture from the photo, back from its hair row;
* **the neck**: a cylinder (radius 0.55, axis ``z = -0.7``) that does *not* turn with the head, as a torso does
  not; it fills the space under the jaw.

The photo's own head pose (from the mean-face fit) is undone, so the rendered rotation *is* the ground truth,
in :mod:`cofe_encoders.face.pose`'s conventions. Projection is orthographic (the weak-perspective model the pose
solvers assume, and a camera a few metres away). Rendering is a vectorised triangle rasteriser with a z-buffer
at 2x, downsampled. Limits: no ears (their texture is the photo's, on the cranium's side), baked-in lighting,
the far half of a photo face turned by more than 12 degrees is textured from the mirror image of its near half,
and the back of the head is hair-coloured.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy.interpolate import RBFInterpolator
from scipy.spatial import ConvexHull, Delaunay

from cofe_encoders.face.pose import MEAN_FACE_68, fit_weak_perspective, rotation_matrix

# Towards-camera depth convention while building (the mean face as insightface stores it).
_MEAN_TC = MEAN_FACE_68 * np.array([1.0, 1.0, -1.0])
_FLIP_Z = np.diag([1.0, 1.0, -1.0])
INNER = np.arange(17, 68)  # brows, nose, eyes, mouth: anatomical points, unlike the jaw contour (a silhouette)
CRANIUM_CENTRE = np.array([0.0, -0.65, -0.62])
CRANIUM_AXES = np.array([0.72, 0.92, 0.95])
FACE_BACK_Z = -0.45
NECK_RADIUS, NECK_Z, NECK_TOP = 0.55, -0.7, 0.0
PIVOT = np.array([0.0, 0.2, -0.6])  # top of the neck: the head turns about it


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {name!r} package is not installed (workspace dev group)")
    return Path(next(iter(spec.submodule_search_locations)))


def photo(name: str) -> np.ndarray:
    """A real photo shipped in a wheel, uint8 RGB: ``astronaut``, ``hopper``, ``hanks`` or ``t1`` (six people)."""
    if name == "astronaut":
        import skimage.data

        return np.ascontiguousarray(skimage.data.astronaut())
    if name == "hopper":
        from matplotlib import cbook

        return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    if name in ("t1", "hanks"):
        file = "t1.jpg" if name == "t1" else "Tom_Hanks_54745.png"
        return np.asarray(Image.open(_package_dir("insightface") / "data" / "images" / file).convert("RGB"))
    raise ValueError(f"unknown photo {name!r}; choose astronaut, hopper, hanks or t1")


@functools.cache
def _dlib():
    import dlib

    models = _package_dir("face_recognition_models") / "models"
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))


def landmarks68(image: np.ndarray, upsample: int = 1) -> list[np.ndarray]:
    """dlib's 68 landmarks ``(68, 2)`` of every face dlib finds, largest first."""
    detector, predictor = _dlib()
    rects = sorted(detector(image, upsample), key=lambda r: r.width() * r.height(), reverse=True)
    return [np.array([[p.x, p.y] for p in predictor(image, r).parts()], np.float64) for r in rects]


def pose68(lm68: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) from 68 landmarks: the mean 3D face fitted to the 51 inner points (weak perspective)."""
    from cofe_encoders.face.pose import matrix_to_angles

    return matrix_to_angles(fit_weak_perspective(lm68[INNER], MEAN_FACE_68[INNER]).rotation)


# Every identity the benchmark renders: three portraits and five people of t1.jpg (left to right). t1-4 is left
# out: turned 48 degrees in the photo, its mirrored far side still samples the background around the nose.
IDENTITIES = ("astronaut", "hopper", "hanks", "t1-0", "t1-1", "t1-2", "t1-3", "t1-5")


@functools.cache
def source(identity: str) -> tuple[np.ndarray, np.ndarray]:
    """``(photo, lm68)`` of one identity."""
    img = photo("t1" if identity.startswith("t1-") else identity)
    faces = landmarks68(img)
    if identity.startswith("t1-"):
        faces = sorted(faces, key=lambda lm: lm[:, 0].min())[int(identity[3:]) :]
    if not faces:
        raise ValueError(f"dlib found no face in {identity!r}")
    return img, faces[0]


@dataclass
class Mesh:
    """Triangles in the head frame (towards-camera z) with photo texture coordinates."""

    vertices: np.ndarray  # (V, 3)
    uv: np.ndarray  # (V, 2) photo pixels
    triangles: np.ndarray  # (T, 3) int
    rigid: bool = True  # turns with the head


@dataclass
class Head:
    """A textured head ready to render."""

    photo: np.ndarray
    meshes: list[Mesh]
    landmarks3d: np.ndarray  # (68, 3) head frame, towards-camera z
    photo_pose: tuple[float, float, float]  # (yaw, pitch, roll) of the face in the photo
    background: np.ndarray  # (3,) uint8


def _ellipsoid_mesh(n_lat: int = 40, n_lon: int = 64) -> tuple[np.ndarray, np.ndarray]:
    lat = np.linspace(0.0, np.pi, n_lat)
    lon = np.linspace(0.0, 2 * np.pi, n_lon, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    # Unit sphere: y is the pole axis (top of the head at y = -1), z towards the camera at lon = 0.
    pts = np.stack([np.sin(la) * np.sin(lo), -np.cos(la), np.sin(la) * np.cos(lo)], -1).reshape(-1, 3)
    idx = np.arange(n_lat * n_lon).reshape(n_lat, n_lon)
    a, b = idx[:-1], np.roll(idx, -1, axis=1)[:-1]
    c, d = idx[1:], np.roll(idx, -1, axis=1)[1:]
    tris = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    return pts, tris


def photo_pose(image: np.ndarray, lm68: np.ndarray) -> tuple[float, float, float]:
    """The photo face's (yaw, pitch, roll), yaw and roll made mirror-consistent.

    The 68-point fit of one photo and of its mirror image differ by a bias that comes from the landmark detector
    and the mean face, not from the face: ``yaw_fit = yaw + b`` and ``yaw_fit(mirror) = -yaw + b``, so
    ``(yaw_fit - yaw_fit(mirror)) / 2`` removes it (same for roll). Pitch is returned as 0: the mean face fitted
    to dlib's points reads -1 to -31 degrees on these near-level photos (a layout mismatch, not their pose), and
    undoing it would tilt the texture on the head; rendered pitch is therefore known only to about 10-15 degrees,
    which is why the benchmark scores yaw.
    """
    yaw, _, roll = pose68(lm68)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    centre = lm68.mean(0)
    centre_m = np.array([image.shape[1] - 1 - centre[0], centre[1]])
    cands = landmarks68(mirrored)
    if cands:
        lm_m = min(cands, key=lambda lm: float(np.linalg.norm(lm.mean(0) - centre_m)))
        if np.linalg.norm(lm_m.mean(0) - centre_m) < 0.2 * np.ptp(lm68[:, 0]):
            yaw_m, _, roll_m = pose68(lm_m)
            yaw, roll = (yaw - yaw_m) / 2.0, (roll - roll_m) / 2.0
    return yaw, 0.0, roll


def build_head(image: np.ndarray, lm68: np.ndarray, grid: float = 0.025, identity_shape: float = 0.0) -> Head:
    """Build the textured head of one photo face (see module docstring).

    Geometry is the mean face (so the ground truth is exact in its frame), optionally moved ``identity_shape`` of
    the way towards the photo's own 2D landmark layout; the photo is the texture, warped onto it by a thin-plate
    spline through the 68 landmark pairs (each landmark's texture lands on its own vertex).

    Args:
        image: The photo, uint8 RGB.
        lm68: dlib's 68 landmarks of the face.
        grid: Spacing of the face surface's vertices (mean-face units).
        identity_shape: 0 = mean-face geometry; 1 = the photo's 2D layout with mean depths (that mixes
            landmark conventions: dlib's 2D layout with the 3D mean face reads 10-30 degrees of pitch).
    """
    pose_p = photo_pose(image, lm68)
    rot_p = _FLIP_Z @ rotation_matrix(*pose_p) @ _FLIP_Z  # photo pose in towards-camera axes
    posed = (_MEAN_TC @ rot_p.T)[:, :2]
    # Scale and translation of the photo camera for that pose (least squares on the inner points).
    pc, lc = posed[INNER] - posed[INNER].mean(0), lm68[INNER] - lm68[INNER].mean(0)
    s = float((pc * lc).sum() / (pc * pc).sum())
    t = lm68[INNER].mean(0) - s * posed[INNER].mean(0)
    # Residual warp: photo landmarks minus the posed mean face's, smooth in between.
    residual = RBFInterpolator(s * posed + t, lm68 - (s * posed + t), kernel="thin_plate_spline", smoothing=5.0)

    # A photo face turned by more than 12 degrees hides part of its far side: texture that half from the mirror
    # image of the near half (faces are nearly symmetric; the mirror of the midline is the midline, so the
    # texture stays continuous there).
    hidden = np.sign(pose_p[0]) if abs(pose_p[0]) > 12.0 else 0.0

    def to_photo(head_pts: np.ndarray) -> np.ndarray:
        pts = head_pts.copy()
        if hidden:
            far = pts[:, 0] * hidden > 0
            pts[far, 0] *= -1.0
        q = s * (pts @ rot_p.T)[:, :2] + t
        return q + residual(q)

    lm3 = _MEAN_TC.copy()
    if identity_shape:
        own = np.linalg.lstsq(np.c_[lm68, np.ones(68)], _MEAN_TC[:, :2], rcond=None)[0]
        lm3[:, :2] += identity_shape * (np.c_[lm68, np.ones(68)] @ own - _MEAN_TC[:, :2])

    # Face surface: dense grid inside the landmarks' convex hull (frontal projection), depth by a thin-plate spline.
    xy = lm3[:, :2]
    hull = ConvexHull(xy)
    outline = xy[hull.vertices]  # (K, 2)
    lo, hi = outline.min(0), outline.max(0)
    gx, gy = np.meshgrid(np.arange(lo[0], hi[0], grid), np.arange(lo[1], hi[1], grid))
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    inside = Delaunay(outline).find_simplex(pts) >= 0
    pts = pts[inside & (_dist_to_polygon(pts, outline) > 0.5 * grid)]  # the outline's own vertices make the edge
    pts2 = np.unique(np.round(np.concatenate([outline, xy, pts]), 6), axis=0)
    depth_of = RBFInterpolator(xy, lm3[:, 2], kernel="thin_plate_spline", smoothing=1e-4)
    tri = Delaunay(pts2).simplices
    keep = Delaunay(outline).find_simplex(pts2[tri].mean(1)) >= 0
    front_v = np.c_[pts2, depth_of(pts2)]
    front = Mesh(front_v, to_photo(front_v), tri[keep])
    # Back plane and side walls of the face solid; texture pulled 4% towards the centre (skin, not background).
    k = len(outline)
    centroid = outline.mean(0)
    rim_front = np.c_[outline, depth_of(outline)]
    # The back edge is drawn in towards the midline so the walls slope like the underside of a jaw, not a box.
    rim_back = rim_front.copy()
    rim_back[:, 0] *= 0.6
    rim_back[:, 2] = FACE_BACK_Z
    inner_rim = rim_front.copy()
    inner_rim[:, :2] += 0.04 * (centroid - outline)
    uv_rim = to_photo(inner_rim)
    centre_back = np.array([[*rim_back[:, :2].mean(0), FACE_BACK_Z]])
    ring = np.arange(k)
    wall_tris = np.concatenate(
        [np.stack([ring, (ring + 1) % k, ring + k], 1), np.stack([(ring + 1) % k, (ring + 1) % k + k, ring + k], 1)]
    )
    back_tris = np.stack([ring + k, (ring + 1) % k + k, np.full(k, 2 * k)], 1)
    walls = Mesh(
        np.concatenate([rim_front, rim_back, centre_back]),
        np.concatenate([uv_rim, uv_rim, to_photo(np.c_[centroid[None], [[0.3]]])]),
        np.concatenate([wall_tris, back_tris]),
    )

    # Cranium: front hemisphere (as the photo camera sees it) textured by projection, back by the hair row.
    unit, etri = _ellipsoid_mesh()
    cran = unit * CRANIUM_AXES + CRANIUM_CENTRE
    uv = to_photo(cran)
    normal_cam = (unit / CRANIUM_AXES) @ rot_p.T
    # The back of the head takes the colours of one row across the hair (0.55 units above the brows), from the
    # middle half of the head's width.
    hair_row = lm3[17:27, 1].min() - 0.55
    back = normal_cam[:, 2] < 0.0
    hair_pts = np.stack([np.clip(cran[back, 0], -0.35, 0.35), np.full(back.sum(), hair_row), np.zeros(back.sum())], 1)
    uv[back] = to_photo(hair_pts)
    cranium = Mesh(cran, uv, etri)

    # Neck: a vertical cylinder that stays still; texture by projection. The part above the chin (hidden until
    # the head turns) takes the colour just below the chin rather than the face's.
    ang = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
    ys = np.linspace(NECK_TOP, NECK_TOP + 3.0, 16)
    aa, yy = np.meshgrid(ang, ys)
    neck = np.stack([NECK_RADIUS * np.sin(aa), yy, NECK_Z + NECK_RADIUS * np.cos(aa)], -1).reshape(-1, 3)
    chin_y = lm3[8, 1] + 0.08
    nuv = s * np.stack([neck[:, 0], np.maximum(neck[:, 1], chin_y)], 1) + t
    nidx = np.arange(neck.shape[0]).reshape(len(ys), len(ang))
    na, nb = nidx[:-1], np.roll(nidx, -1, axis=1)[:-1]
    nc, nd = nidx[1:], np.roll(nidx, -1, axis=1)[1:]
    ntri = np.concatenate([np.stack([na, nb, nc], -1).reshape(-1, 3), np.stack([nb, nd, nc], -1).reshape(-1, 3)])
    neck_mesh = Mesh(neck, nuv, ntri, rigid=False)

    corners = np.concatenate([image[:8, :8], image[:8, -8:]]).reshape(-1, 3)
    background = np.clip(0.5 * np.median(corners, 0) + 0.5 * 200, 0, 255).astype(np.uint8)
    return Head(image, [front, walls, cranium, neck_mesh], lm3, pose_p, background)


def _dist_to_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    a, b = poly, np.roll(poly, -1, axis=0)
    ab = b - a  # (K, 2)
    ap = points[:, None, :] - a[None]  # (N, K, 2)
    u = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    d = ap - u[..., None] * ab
    return np.sqrt((d**2).sum(-1)).min(1)


def rasterize(xy: np.ndarray, depth: np.ndarray, tris: np.ndarray, height: int, width: int):
    """Front-most triangle per pixel centre.

    Args:
        xy: ``(V, 2)`` screen positions (pixel centres at integer coordinates).
        depth: ``(V,)`` larger is nearer.
        tris: ``(T, 3)`` vertex indices.

    Returns:
        ``(tri_id (H, W) int, -1 where empty; bary (H, W, 3))``.
    """
    p = xy[tris]  # (T, 3, 2)
    x0, y0 = p[:, 0, 0], p[:, 0, 1]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    lo = np.floor(p.min(1)).astype(np.int64)
    hi = np.ceil(p.max(1)).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    ok = (np.abs(area) > 1e-9) & (hi[:, 0] >= lo[:, 0]) & (hi[:, 1] >= lo[:, 1])
    t_idx = np.nonzero(ok)[0]
    bw = hi[t_idx, 0] - lo[t_idx, 0] + 1
    bh = hi[t_idx, 1] - lo[t_idx, 1] + 1
    counts = bw * bh
    rep = np.repeat(np.arange(len(t_idx)), counts)
    start = np.repeat(np.cumsum(counts) - counts, counts)
    local = np.arange(counts.sum()) - start
    tid = t_idx[rep]
    px = lo[tid, 0] + local % bw[rep]
    py = lo[tid, 1] + local // bw[rep]
    dx, dy = px - x0[tid], py - y0[tid]
    a = area[tid]
    w1 = (dx * e2[tid, 1] - dy * e2[tid, 0]) / a
    w2 = (e1[tid, 0] * dy - e1[tid, 1] * dx) / a
    w0 = 1.0 - w1 - w2
    inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
    tid, px, py, w0, w1, w2 = tid[inside], px[inside], py[inside], w0[inside], w1[inside], w2[inside]
    d = w0 * depth[tris[tid, 0]] + w1 * depth[tris[tid, 1]] + w2 * depth[tris[tid, 2]]
    key = py * width + px
    order = np.lexsort((-d, key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    tri_id = np.full((height, width), -1, np.int64)
    bary = np.zeros((height, width, 3))
    tri_id[py[first], px[first]] = tid[first]
    bary[py[first], px[first]] = np.stack([w0[first], w1[first], w2[first]], 1)
    return tri_id, bary


@dataclass(frozen=True)
class Render:
    """One rendered head and its ground truth.

    Attributes:
        image: ``(S, S, 3)`` uint8 RGB.
        yaw, pitch, roll: The true pose (degrees, conventions of :mod:`cofe_encoders.face.pose`).
        kps5: ``(5, 2)`` true 5 keypoints (eye centres, nose tip, mouth corners) in image pixels.
        lm68: ``(68, 2)`` true 68 landmarks in image pixels.
        face_visible: Fraction of the 68 landmarks not hidden by the head itself.
    """

    image: np.ndarray
    yaw: float
    pitch: float
    roll: float
    kps5: np.ndarray
    lm68: np.ndarray
    face_visible: float


def render(
    head: Head,
    yaw: float,
    pitch: float = 0.0,
    roll: float = 0.0,
    size: int = 320,
    face_px: float = 110.0,
    offset: tuple[float, float] = (0.0, 0.0),
    supersample: int = 2,
) -> Render:
    """Render ``head`` at a pose (degrees): the face's brow-to-chin height is about ``face_px`` pixels."""
    rot = _FLIP_Z @ rotation_matrix(yaw, pitch, roll) @ _FLIP_Z  # towards-camera axes
    ss = supersample
    big = size * ss
    scale = face_px * ss / 1.05  # mean face brow-to-chin = 1.05 units
    centre = np.array([big / 2.0, big / 2.0]) + np.asarray(offset) * ss
    # Place the head so the landmarks' centre sits at the image centre whatever the pose.
    lm_world = (head.landmarks3d - PIVOT) @ rot.T + PIVOT
    shift = -lm_world[:, :2].mean(0)

    verts, depth, uvs, tris = [], [], [], []
    n = 0
    for mesh in head.meshes:
        v = (mesh.vertices - PIVOT) @ rot.T + PIVOT if mesh.rigid else mesh.vertices
        verts.append(scale * (v[:, :2] + shift) + centre)
        depth.append(v[:, 2])
        uvs.append(mesh.uv)
        tris.append(mesh.triangles + n)
        n += len(v)
    xy, z, uv, tri = np.concatenate(verts), np.concatenate(depth), np.concatenate(uvs), np.concatenate(tris)
    tri_id, bary = rasterize(xy, z, tri, big, big)
    hit = tri_id >= 0
    tex = np.zeros((big, big, 2), np.float32)
    tv = uv[tri[tri_id[hit]]]  # (P, 3, 2)
    tex[hit] = (bary[hit][..., None] * tv).sum(1)
    sampled = cv2.remap(head.photo, tex[..., 0], tex[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Background: a soft vertical gradient of the photo's corner colour.
    grad = np.linspace(0.9, 1.1, big)[:, None, None]
    bg = np.clip(head.background[None, None, :].astype(np.float32) * grad, 0, 255)
    out = np.where(hit[..., None], sampled.astype(np.float32), np.broadcast_to(bg, (big, big, 3)))
    image = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    lm_img = (scale * (lm_world[:, :2] + shift) + centre) / ss - (ss - 1) / (2.0 * ss)
    # A landmark is visible when nothing nearer covers it (z-buffer test at its pixel).
    zbuf = np.full((big, big), -np.inf)
    zbuf[hit] = (bary[hit] * z[tri[tri_id[hit]]]).sum(1)
    pix = np.clip(np.round(scale * (lm_world[:, :2] + shift) + centre).astype(int), 0, big - 1)
    visible = lm_world[:, 2] >= zbuf[pix[:, 1], pix[:, 0]] - 0.03
    kps5 = np.stack(
        [lm_img[36:42].mean(0), lm_img[42:48].mean(0), lm_img[30], lm_img[48], lm_img[54]]
    )  # subject's right eye first: dlib 36-41 is the subject's right eye (image left)
    return Render(image, float(yaw), float(pitch), float(roll), kps5, lm_img, float(visible.mean()))


@functools.cache
def head(identity: str) -> Head:
    """The cached :class:`Head` of one of :data:`IDENTITIES`."""
    return build_head(*source(identity))


if __name__ == "__main__":  # a contact sheet: python packages/encoders/benchmarks/heads.py OUT.png
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "heads.png"
    rows = []
    for ident in os.environ.get("IDS", "astronaut,hopper,hanks,t1-0,t1-3").split(","):
        hd = head(ident)
        print(ident, "photo pose (yaw, pitch, roll):", np.round(hd.photo_pose, 1))
        yaws = (-90, -60, -30, 0, 30, 60, 75, 90)
        rows.append(np.concatenate([render(hd, y, 0, 0, size=256, face_px=72).image for y in yaws], 1))
    Image.fromarray(np.concatenate(rows, 0)).save(out)
    print("wrote", out)
