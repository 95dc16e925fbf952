"""`cofe fit --config FILE`: LightningCLI over `CoFEModule` and `ShardDataModule`, tracked in MLflow.

- Config: YAML through OmegaConf (``parser_mode="omegaconf+"``: interpolations see command-line overrides).
- Logger: MLflow on a local SQLite store (``sqlite:///mlflow.db``) unless ``MLFLOW_TRACKING_URI`` names another.
- A run has a name (``--name``, default ``cofe``) and a folder ``<trainer.default_root_dir>/<name>/``: its
  checkpoints (``checkpoints/``, the last 3 by step plus ``last.ckpt``), the exported trained weights and
  ``run.json`` (the MLflow run it logs to).
- Resume: ``cofe fit --config FILE --ckpt_path last`` (same ``--name``) continues from that folder's ``last.ckpt``:
  same optimiser step, scheduler, EMA and data position, logging into the same MLflow run. Starting a run whose
  folder already holds checkpoints, without ``--ckpt_path``, is refused (it would silently start over).
- The model's components (``model.components``) default to the ``config.json`` of ``cofe precompute`` found beside
  the training shards: geometry and widths are read from there and checked against the DiT preset.
- Each MLflow run holds the resolved config (``config.yaml``), the git revision and package versions (params),
  metrics, the per-block gate heatmap (PNG) and, once at the end, the trained weights as safetensors (and their
  EMA). Checkpoints are not copied into MLflow unless ``--trainer.logger.init_args.log_model true``.

LightningCLI's own ``SaveConfigCallback`` needs ``trainer.log_dir``, which an MLflow logger on SQLite does not
have; ``MLflowConfigSaver`` writes the config into the MLflow run instead.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import lightning as L
from jsonargparse import lazy_instance, set_parsing_settings
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info
from safetensors.torch import save_file

from cofe_apps.data import ShardDataModule
from cofe_apps.helptext import fit_formatter
from cofe_apps.io import atomic_write_text, git_revision
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


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` as pure FSDP2: every process of every node is a data-parallel rank (Lightning's
    ``"auto"`` would make ``tensor_parallel_size`` the processes per node). ``CoFEModule.configure_model`` applies
    one ``fully_shard`` per DiT block; checkpoints are distributed (one file per rank + ``meta.pt``)."""

    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs):
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """Every rank writes into ``.NAME.partial``; rank 0 then swaps it in for ``NAME``, so a run killed while
        saving leaves the previous checkpoint (or the complete new one), never a directory missing ranks."""
        import shutil

        from cofe_apps.io import fsync_dir

        path = Path(self.broadcast(str(filepath)))
        tmp, old = path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.old")
        if self.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier()
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier()
        if self.global_rank == 0:
            shutil.rmtree(old, ignore_errors=True)
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier()


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
        if not getattr(pl_module, "restoring", None):  # a resumed run keeps its first start's params
            logger.log_hyperparams(params)


class _EveryNSteps(L.Callback):
    """Runs ``_run(trainer, module, final)`` every ``every_n_steps`` training steps (0: never) and when training
    ends (``final=True``)."""

    def __init__(self, every_n_steps: int = 500):
        self.every_n_steps = every_n_steps

    def _run(self, trainer: L.Trainer, module: CoFEModule, final: bool) -> None:
        """What to do at those steps: each of the two callbacks below defines it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._run(trainer, pl_module, False)

    def on_train_end(self, trainer, pl_module) -> None:
        self._run(trainer, pl_module, True)


class TrainedWeightsExport(_EveryNSteps):
    """Write the trained weights (and their EMA) as safetensors every ``every_n_steps`` and at the end, into the
    run folder; the final ones are also logged to the MLflow run, once.

    Under FSDP every rank takes part in gathering the sharded weights; rank 0 writes them.
    """

    def _run(self, trainer: L.Trainer, module: CoFEModule, final: bool) -> None:
        folder = Path(trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else "checkpoints")
        meta = {"step": str(trainer.global_step), "hparams": json.dumps(dict(module.hparams), default=str)}
        files = []
        for ema in (False, True):
            if ema and module.ema is None:
                continue
            state = module.model_state(ema=ema, trained_only=True)  # a collective under FSDP: every rank
            if trainer.global_rank != 0:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / ("trained_ema.safetensors" if ema else "trained.safetensors")
            tmp = path.with_name(path.name + ".tmp")
            save_file(state, str(tmp), metadata=meta)
            tmp.replace(path)
            files.append(path)
        logger = _mlflow(trainer)
        if final and logger is not None and trainer.global_rank == 0:
            for path in files:
                logger.experiment.log_artifact(logger.run_id, str(path), "weights")


class GateHeatmap(_EveryNSteps):
    """Per-block expert gate weights as a heatmap PNG in the MLflow run (every ``every_n_steps`` and at the end)."""

    def _run(self, trainer: L.Trainer, module: CoFEModule, final: bool) -> None:
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


class ResumeError(SystemExit):
    """A run that would lose or mix progress (printed, exit status 2)."""

    def __init__(self, message: str):
        print(f"cofe fit: {message}", file=sys.stderr)
        super().__init__(2)


def _first_process() -> bool:
    """The process that starts a run (Lightning's launcher starts the others with LOCAL_RANK / NODE_RANK set)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _checkpoints_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.ckpt")) if folder.is_dir() else []


def _complete(path: Path) -> bool:
    """A checkpoint that was written to the end: a whole zip file, or a sharded directory with its metadata."""
    import zipfile

    if path.is_dir():
        return (path / "meta.pt").is_file() and (path / ".metadata").is_file()
    return path.is_file() and zipfile.is_zipfile(path)


def _global_step(path: Path) -> int | None:
    """The ``global_step`` a complete checkpoint records (tensors memory-mapped, not read), or None."""
    import torch

    try:
        if path.is_dir():
            state = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["global_step"])
    except Exception:
        return None


def resolve_last(folder: Path, tidy: bool = False) -> Path | None:
    """``--ckpt_path last``: the complete checkpoint that got furthest (``last.ckpt`` on a tie).

    A run killed after a step checkpoint and before ``last.ckpt`` was rewritten resumes from the step checkpoint;
    one killed while writing ``last.ckpt`` resumes from the newest complete one before it. With ``tidy`` (the
    process that starts the run), half-written checkpoints are removed: the resumed run writes those names again,
    and a leftover would make Lightning version the new file (``-v1``) and keep it outside its retention.
    """
    import shutil

    candidates = [folder / "last.ckpt", *_checkpoints_in(folder)]
    best, best_step = None, -1
    for path in dict.fromkeys(candidates):
        if not path.exists():
            continue
        step = _global_step(path) if _complete(path) else None
        if step is None:
            if tidy and path.name != "last.ckpt":
                rank_zero_info(f"cofe fit: removing {path}, a checkpoint that was not written to the end")
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            continue
        if step > best_step:
            best, best_step = path, step
    if best is not None and best.name != "last.ckpt":
        rank_zero_info(f"cofe fit: resuming from {best.name} (step {best_step}), newer than last.ckpt")
        if tidy:
            # last.ckpt is what users export and sample: it must not stay behind, and a run that is already at
            # max_steps would write nothing to bring it forward.
            _link_copy(best, folder / "last.ckpt")
            best = folder / "last.ckpt"
    return best


def _link_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of the checkpoint ``src`` out of hard links (plain copies where the file system refuses
    links), swapped in whole. Links are safe: Lightning replaces a checkpoint file by renaming a new one over it
    (fsspec's transaction) and :class:`FSDP2Strategy` swaps folders, so neither writes into a shared inode."""
    import shutil

    from cofe_apps.io import fsync_dir

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    tmp, old = dst.with_name(f".{dst.name}.partial"), dst.with_name(f".{dst.name}.old")
    for path in (tmp, old):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    shutil.copytree(src, tmp, copy_function=link) if src.is_dir() else link(str(src), str(tmp))
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    fsync_dir(dst.parent)
    shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)


class CoFECLI(LightningCLI):
    """Adds the run name, the checkpoint and export callbacks as config sections (``checkpoint:``, ``export:``,
    ``gates:``), the components default and the resume logic described in the module docstring."""

    def add_arguments_to_parser(self, parser) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        parser.add_argument(
            "--name",
            default="cofe",
            help="run name: its folder is <trainer.default_root_dir>/<name> (checkpoints, run.json), its MLflow "
            "run is named after it; resume it with --ckpt_path last",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.every_n_train_steps": 500,
                "checkpoint.save_top_k": 3,  # bounded retention: the 3 latest by step, plus last.ckpt
                "checkpoint.monitor": "step",
                "checkpoint.mode": "max",
            }
        )
        parser.add_lightning_class_args(TrainedWeightsExport, "export")
        parser.add_lightning_class_args(GateHeatmap, "gates")

    def before_instantiate_classes(self) -> None:
        c = self.config[self.subcommand] if self.subcommand else self.config
        root = Path(c.trainer.default_root_dir or ".") / c.name
        self.run_dir = root
        if not c.checkpoint.dirpath:
            c.checkpoint.dirpath = str(root / "checkpoints")
        if c.model.components is None:
            c.model.components = _components_beside(c.data.train_shards)
        ckpt_dir = Path(c.checkpoint.dirpath)
        if c.ckpt_path == "last":
            last = resolve_last(ckpt_dir, tidy=_first_process())
            if last is not None:
                c.ckpt_path = str(last)
            else:
                rank_zero_info(f"cofe fit: no checkpoint in {ckpt_dir} for run {c.name!r}: starting a new run")
                c.ckpt_path = None
        elif c.ckpt_path is None and _checkpoints_in(ckpt_dir) and _first_process():
            raise ResumeError(
                f"{ckpt_dir} already holds checkpoints of a run named {c.name!r}: resume it with --ckpt_path last, "
                "or start another with --name"
            )
        self.resume_from = c.ckpt_path

    def before_fit(self) -> None:
        self.model.restoring = str(self.resume_from) if self.resume_from else None
        logger = _mlflow(self.trainer)
        run_file = self.run_dir / "run.json"
        if logger is None:
            return
        logger._run_name = logger._run_name or self.config[self.subcommand].name
        if self.resume_from and run_file.exists():
            recorded = json.loads(run_file.read_text())
            if recorded.get("tracking_uri") == logger._tracking_uri:
                logger._run_id = recorded["run_id"]  # continue the MLflow run of the interrupted start
        if self.trainer.is_global_zero:
            run_id = logger.run_id  # creates (or reopens) the run
            info = {"run_id": run_id, "tracking_uri": logger._tracking_uri, "experiment": logger._experiment_name}
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_file, json.dumps(info, indent=1))


def _components_beside(shards) -> str | None:
    """The ``config.json`` of ``cofe precompute`` in the folder of the first training shard, if there is one."""
    from cofe_apps.io import expand_shards

    try:
        urls = expand_shards(shards) if shards else []
    except Exception:
        return None
    for url in urls[:1]:
        candidate = Path(url).parent / "config.json"
        if "://" not in url and candidate.is_file():
            try:
                if json.loads(candidate.read_text()).get("format") == "cofe-precompute":
                    return str(candidate)
            except ValueError:
                return None
    return None


def trainer_defaults() -> dict:
    """MLflow on a local SQLite store (``MLFLOW_TRACKING_URI`` and ``COFE_EXPERIMENT`` override)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    return {
        "logger": lazy_instance(
            MLFlowLogger, experiment_name=os.environ.get("COFE_EXPERIMENT", "cofe"), tracking_uri=uri, log_model=False
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
        # Help in plain text (cofe_apps.helptext; subcommand parsers take the main parser's formatter), with this
        # module's docstring as the description of `cofe fit --help`.
        parser_kwargs={
            "parser_mode": "omegaconf+",
            "formatter_class": fit_formatter(),
            "fit": {"description": __doc__},
        },
        save_config_callback=MLflowConfigSaver,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults(),
        auto_configure_optimizers=False,
    )
    return 0
