"""Run the project as ``python -m cardiac_pipeline`` (same as ``kedro run``), or train one model.

``python -m cardiac_pipeline train --k 1 --seed 0`` trains the fewshot CardiacCLIP of one
(k, seed) with the project's parameters (``conf/``; ``--env``, ``--params`` as for
``kedro run``), calibrates its prediction interval and writes its checkpoint, the kind the
fewshot pipeline writes (``--out``, default ``data/06_models/train/k<k>_seed<seed>.pt``;
``kedro run --pipeline predict`` reads it). Launched by torchrun it trains across the GPUs
of the machine:

    torchrun --nproc_per_node=4 -m cardiac_pipeline train --k 1 --seed 0

Every adaptation mode runs: the cached modes first build (or reuse) the frame-feature
store the fewshot pipeline builds, on rank 0. ``training.batch_size`` (and
``training.cached.batch_size``) stay the global batch, split over the processes, so the
result is that of one process. It needs the clip store (a fewshot run, or the ingestion and
preprocessing pipelines) and, with ``backbone.pretrained: pretrain``, the pretrained
backbone (``--pipeline pretrain``). A user error ends every process with exit status 2
and one line ``Error: ...`` from rank 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

from cardiac_pipeline.errors import USER_ERROR_EXIT_CODE, UserError, one_line

logger = logging.getLogger("cardiac_pipeline.train")

# what a train command reads, and what makes it (run the fewshot pipeline once)
_PREREQUISITES = {
    "video_index": "`kedro run` (or `kedro run --pipeline ingestion`)",
    "clip_store": "`kedro run` (or `kedro run --pipeline preprocessing`)",
}


def main(*args: Any, **kwargs: Any) -> Any:
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    kwargs["standalone_mode"] = not hasattr(sys, "ps1")
    run = find_run_command(package_name)
    return run(*args, **kwargs)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are user errors (printed once, by rank 0)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


def _parse_train_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _ArgumentParser(
        prog="python -m cardiac_pipeline train",
        description="Train the fewshot CardiacCLIP of one (k, seed); under torchrun, with DDP.",
    )
    parser.add_argument("--k", type=int, required=True, help="TRAIN videos per EF level")
    parser.add_argument("--seed", type=int, required=True, help="split and training seed")
    parser.add_argument("--env", default=None, help="Kedro configuration environment")
    parser.add_argument(
        "--params", default="", help="runtime parameters as for kedro run: a.b=1,c=x"
    )
    parser.add_argument("--out", type=Path, default=None, help="checkpoint file to write")
    return parser.parse_args(list(argv))


def _runtime_params(text: str) -> dict[str, Any]:
    """``a.b=1,c=x`` -> ``{"a": {"b": 1}, "c": "x"}`` (values read as YAML)."""
    import yaml

    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--params {item!r}: expected key=value (e.g. training.epochs=5)")
        *parents, leaf = key.strip().split(".")
        node = params
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    return params


@contextmanager
def _mlflow_run(
    context: Any, name: str, tags: dict[str, Any], params: dict[str, Any]
) -> Iterator[str | None]:
    """An MLflow run on rank 0 in the configured store (``conf/<env>/mlflow.yml``)."""
    from cardiac_pipeline.model import distributed

    if not distributed.is_main():
        yield None
        return
    import mlflow

    from cardiac_pipeline.hooks import DEFAULT_MLFLOW_CONFIG, setup_mlflow
    from cardiac_pipeline.tracking import flatten_params

    try:
        user_config = context.config_loader["mlflow"] or {}
    except Exception:  # no mlflow.yml in this env, as the tracking hook
        user_config = {}
    config = {**DEFAULT_MLFLOW_CONFIG, **user_config}
    if setup_mlflow(config, Path(context.project_path)) is None:
        yield None
        return
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})
        mlflow.log_params(flatten_params(params))
        yield run.info.run_id


def _backbone(catalog: Any, backbone: Any) -> Any:
    """``backbone`` with ``pretrained: pretrain`` resolved to the pretrain pipeline's output."""
    from kedro.io import DatasetError

    from cardiac_pipeline.model import recipe

    try:
        checkpoint = str(catalog.load("pretrained_backbone"))
    except DatasetError:  # recipe.with_pretrained says what to run when it is needed
        checkpoint = None
    try:
        return recipe.with_pretrained(backbone, checkpoint)
    except ValueError as error:  # no or another checkpoint: what to run, on one line
        raise UserError(one_line(error)) from None


def _load_prerequisite(catalog: Any, name: str) -> Any:
    """A dataset an earlier pipeline writes; a ``UserError`` saying which run makes it."""
    from kedro.io import DatasetError

    try:
        return catalog.load(name)
    except DatasetError:
        raise UserError(
            f"dataset {name!r} is missing (conf/base/catalog.yml); run {_PREREQUISITES[name]} "
            "in this project first"
        ) from None


def train(argv: Sequence[str]) -> Path | None:
    """``python -m cardiac_pipeline train``; the checkpoint written (rank 0), else None.

    A user error exits with status 2 on every process, printed by rank 0 alone: torchrun's
    other processes would each print the same traceback.
    """
    from cardiac_pipeline.model import distributed

    try:
        return _train(argv)
    except UserError as error:
        if distributed.launch_rank() == 0:
            print(f"Error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None


def _train(argv: Sequence[str]) -> Path | None:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from cardiac_pipeline.model import distributed
    from cardiac_pipeline.validation import check_run

    args = _parse_train_args(argv)
    project = Path.cwd()
    bootstrap_project(project)
    runtime = _runtime_params(args.params)
    with KedroSession.create(project_path=project, env=args.env, runtime_params=runtime) as session:
        context = session.load_context()
    from cardiac_pipeline.config import section

    check_run(context.params, reads={"params:fewshot"})
    distributed.init_from_env(section("training", context.params["training"]).device)
    try:
        return _train_one(context, args)
    finally:
        distributed.shutdown()


def _split(catalog: Any, fewshot: dict[str, Any], k: int, seed: int) -> Any:
    """The k-shot split of (k, seed), as the fewshot pipeline samples it."""
    from cardiac_pipeline.config import section
    from cardiac_pipeline.echo.kshot import k_shot_split

    grid = section("fewshot", fewshot)
    return k_shot_split(
        _load_prerequisite(catalog, "video_index"),
        k=k,
        seed=seed,
        val_size=grid.val_size,
        val_seed=grid.val_seed,
        calibration_size=grid.calibration_size,
    )


def _frame_features(catalog: Any, clip_store: Any, typed: Any, split: Any) -> Any:
    """The frame-feature store of the split's videos (None where the mode trains on clips).

    Rank 0 builds what is missing with the fewshot pipeline's node and records it in the
    catalog (``frame_features``); the other processes wait, then open the same store.
    """
    from cardiac_pipeline.config import record
    from cardiac_pipeline.model import distributed
    from cardiac_pipeline.pipelines.fewshot.nodes import build_frame_features

    built = False
    if distributed.is_main():
        store = build_frame_features(
            clip_store,
            catalog.load("frame_features_folder"),
            record(typed.backbone),
            record(typed.cardiac_clip),
            record(typed.clips),
            record(typed.training),
            split,
            with_checkpoint=False,
        )
        built = store != {}
        if built:
            catalog.save("frame_features", store)
    built = distributed.broadcast_object(built)
    return catalog.load("frame_features") if built else None


def _train_one(context: Any, args: argparse.Namespace) -> Path | None:

    from cardiac_pipeline.config import RECIPE_SECTIONS, recipe_of, record
    from cardiac_pipeline.model import distributed, recipe
    from cardiac_pipeline.tracking import log_metrics

    params, catalog = context.params, context.catalog
    typed = recipe_of(**{name: params[name] for name in RECIPE_SECTIONS})
    split = _split(catalog, params["fewshot"], args.k, args.seed)
    clip_store = _load_prerequisite(catalog, "clip_store")
    training = dataclasses.replace(typed.training, seed=args.seed)
    backbone = _backbone(catalog, typed.backbone)
    typed = dataclasses.replace(typed, backbone=backbone, training=training)
    features = _frame_features(catalog, clip_store, typed, split)
    name = f"k{args.k}_seed{args.seed}"
    tags = {
        "k": args.k,
        "seed": args.seed,
        "method": typed.cardiac_clip.method,
        "processes": distributed.world_size(),
    }
    logged = {key: record(getattr(typed, key)) for key in RECIPE_SECTIONS} | tags
    with _mlflow_run(context, name, tags, logged) as run_id:
        checkpoint, result = recipe.train_on_split(
            clip_store,
            split,
            typed,
            on_epoch_end=lambda epoch, metrics: log_metrics(metrics, step=epoch),
            progress=distributed.is_main(),
            features=features,
        )
    if not distributed.is_main():
        return None
    recipe.calibrate_interval(checkpoint, clip_store, split, typed.evaluation, features=features)
    checkpoint["meta"].update({"mlflow_run_id": run_id, "split": name})
    out = args.out or Path("data/06_models/train") / f"{name}.pt"
    _save_checkpoint(checkpoint, out)
    logger.info(
        "%s: VAL MAE %.2f at epoch %d on %d process(es); checkpoint %s",
        name,
        result.selected_val_mae,
        result.selected_epoch,
        distributed.world_size(),
        out,
    )
    return out


def _save_checkpoint(checkpoint: dict[str, Any], out: Path) -> None:
    import torch

    from cardiac_pipeline.io import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda handle: torch.save(checkpoint, handle), fsync=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        train(sys.argv[2:])
    else:
        main()
