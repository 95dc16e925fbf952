"""Raw face videos to pose-varying, identity-consistent, speech-aware WebDataset shards.

Stages (each a module with its typed config in :mod:`cofe_curation.config`): ingest, shots, faces, identity,
speech + caption, shards (writing). :class:`Curator` runs stages 2-6 on a decoded input.
"""

from cofe_curation.caption import CaptionRewriter, RuleBasedRewriter, build_rewriter
from cofe_curation.config import (
    CurationConfig,
    FaceConfig,
    IdentityConfig,
    IngestConfig,
    ShotConfig,
    SpeechConfig,
    WriteConfig,
)
from cofe_curation.ingest import (
    DecodedVideo,
    IngestError,
    InputItem,
    decode,
    decode_windows,
    discover_inputs,
    json_name,
)
from cofe_curation.loader import input_loader, largest_first
from cofe_curation.pipeline import ClipResult, Curator, InputResult, Prepared, error_result, merge_windows
from cofe_curation.runtime import set_threads
from cofe_curation.shards import ShardWriter, clean_orphans, done_sources, finalize

__version__ = "0.3.0"

__all__ = [
    "CaptionRewriter",
    "ClipResult",
    "CurationConfig",
    "Curator",
    "DecodedVideo",
    "FaceConfig",
    "IdentityConfig",
    "IngestConfig",
    "IngestError",
    "InputItem",
    "InputResult",
    "Prepared",
    "RuleBasedRewriter",
    "ShardWriter",
    "ShotConfig",
    "SpeechConfig",
    "WriteConfig",
    "build_rewriter",
    "clean_orphans",
    "curate",
    "decode",
    "decode_windows",
    "discover_inputs",
    "done_sources",
    "error_result",
    "finalize",
    "input_loader",
    "json_name",
    "largest_first",
    "merge_windows",
    "set_threads",
]


def curate(inputs, out_dir, cfg: CurationConfig | None = None, rank: int = 0, world_size: int = 1) -> dict:
    """Curate ``inputs`` into ``out_dir`` in this process (no Lightning): the library's reference loop.

    Skips inputs already finished in ``out_dir``; this rank takes inputs ``rank::world_size``. Returns the
    report of :func:`finalize` (run only by a single-process call, ``world_size == 1``). Takes no lock on
    ``out_dir``: one writer per folder is the caller's business (``cofe curate`` holds a lock).
    """
    cfg = cfg or CurationConfig()
    items = discover_inputs(list(inputs))[rank::world_size]
    notes = clean_orphans(out_dir, world_size) if rank == 0 else []
    done = done_sources(out_dir)
    curator = Curator(cfg)
    writer = ShardWriter(out_dir, rank, cfg.write.shard_max_clips)
    for item in items:
        if json_name(item.source) not in done:
            writer.add(curator.curate_input(item))
    writer.close()
    if world_size == 1:
        return finalize(out_dir, cfg.identity.cluster_threshold, cfg.write.plots, cfg.identity.linkage, notes)
    return {}
