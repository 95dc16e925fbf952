"""The input loader that ``cofe curate`` (and the benchmark) runs: whole inputs curated in DataLoader workers.

Each worker process takes one input at a time and runs every stage on it (:meth:`Curator.curate_input`:
decoding window by window, shots, faces, identity, speech, cutting and encoding the kept clips); the main
process only receives each input's result (decisions and encoded clips, a few MB) and commits shards. So:

* both cores do curation work with one thread each (:func:`cofe_curation.runtime.set_threads`); nothing spins
  or waits on a lock in a third process, and no decoded frames cross a process boundary (a 60 s window at
  8 fps is 330 MB of frames; an input's result is its encoded clips);
* results come back as they finish (``in_order=False``), so a long input does not hold back the results of
  the other worker, and inputs start largest first (:func:`largest_first`) so that the run does not end
  with one worker busy on a long input while the other has nothing left.
"""

from __future__ import annotations

import os
import tarfile

from torch.utils.data import DataLoader, Dataset

from cofe_curation import runtime
from cofe_curation.config import CurationConfig
from cofe_curation.ingest import SHARD_SEP, InputItem
from cofe_curation.pipeline import Curator, InputResult


class InputDataset(Dataset):
    """One item per input: its :class:`InputResult`, encoded clips included.

    The :class:`Curator` (models) is created in each worker on its first item, not in the main process.
    """

    def __init__(self, items: list[InputItem], cfg: CurationConfig) -> None:
        self.items = items
        self.cfg = cfg
        self._curator: Curator | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> InputResult:
        if self._curator is None:
            self._curator = Curator(self.cfg)
        return self._curator.curate_input(self.items[index])


def _one_thread(_worker_id: int) -> None:
    runtime.set_threads(1)


def _first(batch: list[InputResult]) -> InputResult:
    return batch[0]


def input_sizes(items: list[InputItem]) -> list[int]:
    """Bytes of each input: a file's size, or its member's size in a shard (each shard's index read once);
    0 when unknown."""
    shards: dict[str, dict[str, int]] = {}
    sizes = []
    for item in items:
        if SHARD_SEP in item.source:
            shard, member = item.source.split(SHARD_SEP, 1)
            if shard not in shards:
                try:
                    with tarfile.open(shard) as tar:
                        shards[shard] = {m.name: m.size for m in tar.getmembers()}
                except (OSError, tarfile.TarError):
                    shards[shard] = {}
            sizes.append(shards[shard].get(member, 0))
            continue
        try:
            sizes.append(os.stat(item.source).st_size)
        except OSError:
            sizes.append(0)
    return sizes


def largest_first(items: list[InputItem]) -> list[InputItem]:
    """Items by size, largest first (ties keep their order): longest-processing-time-first scheduling, which
    keeps the workers' last inputs short."""
    sizes = input_sizes(items)
    order = sorted(range(len(items)), key=lambda i: -sizes[i])
    return [items[i] for i in order]


def input_loader(
    items: list[InputItem], cfg: CurationConfig, workers: int = 2, start_method: str = "spawn", prefetch: int = 4
) -> DataLoader:
    """A DataLoader that yields one :class:`InputResult` per input, curated in ``workers`` processes.

    Args:
        items: The inputs of this rank (in the order to start them; see :func:`largest_first`).
        cfg: The configuration.
        workers: Worker processes (0: curate in this process, with the libraries' default threads).
        start_method: How workers start. ``"spawn"`` (default): a forked child inherits the OpenCV /
            onnxruntime / OpenMP thread pools that the parent may have started, and can deadlock in them.
        prefetch: Inputs queued per worker; results are small, so a deep queue keeps a worker busy while the
            other finishes a long input.
    """
    return loader_for(InputDataset(items, cfg), workers, start_method, prefetch)


def loader_for(
    dataset: Dataset, workers: int = 2, start_method: str = "spawn", prefetch: int = 4, persistent: bool = False
) -> DataLoader:
    """The DataLoader settings of :func:`input_loader` around any dataset of :class:`InputResult` items
    (``persistent``: keep the workers, and their models, between passes over the dataset)."""
    return DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=workers,
        collate_fn=_first,
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=prefetch if workers else None,
        multiprocessing_context=start_method if workers else None,
        in_order=False,
        persistent_workers=persistent and workers > 0,
    )
