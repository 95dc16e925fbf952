"""A callback the training tests pass to `cofe fit` (``--trainer.callbacks+=cofe_test_callbacks.RecordBatches``, with
this folder on PYTHONPATH): each rank appends the sample keys it trained on and its loss per step."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


class RecordBatches(L.Callback):
    def __init__(self, folder: str = ""):
        self.folder = Path(folder or os.environ["COFE_TEST_RECORD"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        with open(self.folder / f"rank{rank}.txt", "a") as f:
            pid = os.getpid()  # one process per start: a resumed run's records are told apart from the killed one's
            f.writelines(f"{trainer.global_step}\t{trainer.current_epoch}\t{pid}\t{k}\n" for k in batch["keys"])
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(self.folder / f"loss_rank{rank}.txt", "a") as f:
            f.write(f"{trainer.global_step - 1}\t{float(loss)!r}\n")
