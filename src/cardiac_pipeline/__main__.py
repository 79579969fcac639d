"""Run the project as ``python -m cardiac_pipeline`` (same as ``kedro run``), or train one model.

``python -m cardiac_pipeline train --k 1 --seed 0`` trains the fewshot CardiacCLIP of one
(k, seed) with the project's parameters (``conf/``; ``--env``, ``--params`` as for
``kedro run``) and writes its checkpoint (``--out``, default
``data/06_models/train/k<k>_seed<seed>.pt``; ``kedro run --pipeline predict`` reads it).
Launched by torchrun it trains across the GPUs of the machine:

    torchrun --nproc_per_node=4 -m cardiac_pipeline train --k 1 --seed 0

``training.batch_size`` stays the global batch (split over the processes), so the result is
that of one process. It needs the clip store (``kedro run --pipeline preprocessing``) and,
with ``backbone.pretrained: pretrain``, the pretrained backbone (``--pipeline pretrain``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

logger = logging.getLogger("cardiac_pipeline.train")


def main(*args: Any, **kwargs: Any) -> Any:
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    kwargs["standalone_mode"] = not hasattr(sys, "ps1")
    run = find_run_command(package_name)
    return run(*args, **kwargs)


def _parse_train_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
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
            raise ValueError(f"--params {item!r}: expected key=value (e.g. training.epochs=5)")
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


def _pretrained_checkpoint(catalog: Any) -> str | None:
    from kedro.io import DatasetError

    try:
        return str(catalog.load("pretrained_backbone"))
    except DatasetError:  # recipe.with_pretrained says what to run when it is needed
        return None


def train(argv: Sequence[str]) -> Path | None:
    """``python -m cardiac_pipeline train``; the checkpoint written (rank 0), else None."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from cardiac_pipeline.model import distributed

    args = _parse_train_args(argv)
    project = Path.cwd()
    bootstrap_project(project)
    runtime = _runtime_params(args.params)
    with KedroSession.create(project_path=project, env=args.env, runtime_params=runtime) as session:
        context = session.load_context()
    from cardiac_pipeline.config import section

    distributed.init_from_env(section("training", context.params["training"]).device)
    try:
        return _train_one(context, args)
    finally:
        distributed.shutdown()


def _train_one(context: Any, args: argparse.Namespace) -> Path | None:
    import torch

    from cardiac_pipeline.config import RECIPE_SECTIONS, recipe_of, record, section
    from cardiac_pipeline.echo.clipstore import atomic_write
    from cardiac_pipeline.echo.kshot import k_shot_split
    from cardiac_pipeline.model import distributed, recipe
    from cardiac_pipeline.tracking import log_metrics

    params, catalog = context.params, context.catalog
    typed = recipe_of(**{name: params[name] for name in RECIPE_SECTIONS})
    fewshot = section("fewshot", params["fewshot"])
    split = k_shot_split(
        catalog.load("video_index"),
        k=args.k,
        seed=args.seed,
        val_size=fewshot.val_size,
        val_seed=fewshot.val_seed,
        calibration_size=fewshot.calibration_size,
    )
    backbone = recipe.with_pretrained(typed.backbone, _pretrained_checkpoint(catalog))
    training = dataclasses.replace(typed.training, seed=args.seed)
    typed = dataclasses.replace(typed, backbone=backbone, training=training)
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
            catalog.load("clip_store"),
            split,
            typed,
            on_epoch_end=lambda epoch, metrics: log_metrics(metrics, step=epoch),
            progress=distributed.is_main(),
        )
    if not distributed.is_main():
        return None
    checkpoint["meta"].update({"mlflow_run_id": run_id, "split": name})
    out = args.out or Path("data/06_models/train") / f"{name}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda handle: torch.save(checkpoint, handle), fsync=False)
    logger.info(
        "%s: best VAL MAE %.2f at epoch %d on %d process(es); checkpoint %s",
        name,
        result.selected_val_mae,
        result.selected_epoch,
        distributed.world_size(),
        out,
    )
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        train(sys.argv[2:])
    else:
        main()
