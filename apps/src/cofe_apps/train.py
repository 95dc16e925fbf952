"""`cofe fit --config FILE`: LightningCLI over `CoFEModule` and `ShardDataModule`, tracked in MLflow.

- Config: YAML through OmegaConf (``parser_mode="omegaconf+"``: interpolations see command-line overrides).
- Logger: MLflow on a local SQLite store (``sqlite:///mlflow.db``) unless the config names another.
- Each run holds the resolved config (``config.yaml``), the git revision and package versions (params), metrics,
  the per-block gate heatmap (PNG), the trained weights as safetensors, and the full Lightning checkpoints.
- Resume: ``cofe fit --config FILE --ckpt_path last`` (or a path) continues from the same step with the same
  optimiser, scheduler and EMA state.

LightningCLI's own ``SaveConfigCallback`` needs ``trainer.log_dir``, which an MLflow logger on SQLite does not
have; ``MLflowConfigSaver`` writes the config into the MLflow run instead.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import tempfile
import warnings
from pathlib import Path

import lightning as L
from jsonargparse import lazy_instance, set_parsing_settings
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from safetensors.torch import save_file

from cofe_apps.data import ShardDataModule
from cofe_apps.io import git_revision
from cofe_apps.module import CoFEModule

PACKAGES = (
    "cofe-dit",
    "cofe-fusion",
    "cofe-encoders",
    "cofe-curation",
    "cofe-bench",
    "cofe-apps",
    "torch",
    "lightning",
    "webdataset",
    "mlflow",
)


def package_versions() -> dict[str, str]:
    """Our packages' ``__version__`` (editable installs keep stale metadata) and the key dependencies'."""
    out = {}
    for name in PACKAGES:
        try:
            if name.startswith("cofe-"):
                out[name] = importlib.import_module(name.replace("-", "_")).__version__
            else:
                out[name] = importlib.metadata.version(name)
        except (ImportError, importlib.metadata.PackageNotFoundError):
            out[name] = "absent"
    return out


def _mlflow(trainer: L.Trainer) -> MLFlowLogger | None:
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            return logger
    return None


class MLflowConfigSaver(SaveConfigCallback):
    """Save the resolved config, git revision and package versions into the MLflow run (rank 0)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The parent asserts `trainer.log_dir`, which is None for MLflow on SQLite: skip straight to saving.
        if self.already_saved:
            return
        self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = _mlflow(trainer)
        if logger is None or trainer.global_rank != 0:
            return
        text = self.parser.dump(self.config, skip_none=False)
        logger.experiment.log_text(logger.run_id, text, "config.yaml")
        params = {"git_revision": git_revision(), **{f"version/{k}": v for k, v in package_versions().items()}}
        logger.log_hyperparams(params)


class _EveryNSteps(L.Callback):
    """Runs ``_run(trainer, module)`` every ``every_n_steps`` training steps (0: never) and when training ends."""

    def __init__(self, every_n_steps: int = 500):
        self.every_n_steps = every_n_steps

    def _run(self, trainer: L.Trainer, module: CoFEModule) -> None:
        raise NotImplementedError

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._run(trainer, pl_module)


class TrainedWeightsExport(_EveryNSteps):
    """Write the trained weights (and their EMA) as safetensors every ``every_n_steps`` and at the end, into the
    checkpoint folder and the MLflow run."""

    def _run(self, trainer: L.Trainer, module: CoFEModule) -> None:
        if trainer.global_rank != 0:
            return
        folder = Path(trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else "checkpoints")
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"step": str(trainer.global_step), "hparams": json.dumps(dict(module.hparams), default=str)}
        files = []
        for ema in (False, True):
            if ema and not module.ema:
                continue
            path = folder / ("trained_ema.safetensors" if ema else "trained.safetensors")
            tmp = path.with_name(path.name + ".tmp")
            save_file(module.trainable_state(ema=ema), str(tmp), metadata=meta)
            tmp.replace(path)
            files.append(path)
        logger = _mlflow(trainer)
        if logger is not None:
            for path in files:
                logger.experiment.log_artifact(logger.run_id, str(path), "weights")


class GateHeatmap(_EveryNSteps):
    """Per-block expert gate weights as a heatmap PNG in the MLflow run (every ``every_n_steps`` and at the end)."""

    def _run(self, trainer: L.Trainer, module: CoFEModule) -> None:
        logger = _mlflow(trainer)
        if logger is None or trainer.global_rank != 0 or module.last_gates is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        gates = module.last_gates.numpy()  # (L, E)
        names = [e.name for e in module.cofe.cfg.experts]
        fig, ax = plt.subplots(figsize=(2 + 0.8 * len(names), 1 + 0.25 * gates.shape[0]))
        im = ax.imshow(gates, aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("DiT block")
        ax.set_title(f"CoFE gate weights, step {trainer.global_step}")
        fig.colorbar(im, ax=ax)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"gates_step{trainer.global_step:07d}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            logger.experiment.log_artifact(logger.run_id, str(path), "gates")
        plt.close(fig)


class CoFECLI(LightningCLI):
    """Adds the checkpoint and export callbacks as config sections (``checkpoint:``, ``export:``, ``gates:``)."""

    def add_arguments_to_parser(self, parser) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 500, "checkpoint.save_top_k": -1}
        )
        parser.add_lightning_class_args(TrainedWeightsExport, "export")
        parser.add_lightning_class_args(GateHeatmap, "gates")


def trainer_defaults() -> dict:
    """MLflow on a local SQLite store (``MLFLOW_TRACKING_URI`` and ``COFE_EXPERIMENT`` override)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    return {
        "logger": lazy_instance(
            MLFlowLogger, experiment_name=os.environ.get("COFE_EXPERIMENT", "cofe"), tracking_uri=uri, log_model=True
        ),
        "log_every_n_steps": 1,
    }


def main(argv: list[str]) -> int:
    """`cofe fit --config FILE [overrides]` (any LightningCLI ``fit`` argument)."""
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    # `args` and sys.argv agree here (sys.argv must stay: Lightning relaunches it for the other DDP ranks).
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    CoFECLI(
        CoFEModule,
        ShardDataModule,
        args=["fit", *argv],
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_callback=MLflowConfigSaver,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults(),
        auto_configure_optimizers=False,
    )
    return 0
