"""Everything a run's input can get wrong, checked before its first node runs.

``check_run`` builds the typed parameters (``config.build_config``: every section, every
key, types and ranges) and then checks what the chosen pipelines will read: the
``echonet_root`` folder (unless it is the synthetic default that this run generates),
``fewshot.split_file``, TRAIN videos for the few-shot protocol, ``predict.input_dir`` and
the model to predict with. Each problem is a ``UserError`` with one line naming the key
or file, the problem and the fix. Nothing is created or written here.

``ValidationHook`` calls it from Kedro's ``before_pipeline_run``; registered after the
MLflow hook, it runs first (pluggy calls the last registered first), so a refused run
opens no MLflow run either.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from cardiac_pipeline.config import PredictConfig, ProjectConfig, build_config
from cardiac_pipeline.errors import UserError

logger = logging.getLogger(__name__)


def check_run(
    parameters: Mapping[str, Any],
    *,
    reads: Collection[str],
    writes: Collection[str] = (),
) -> ProjectConfig:
    """The run's typed parameters, after checking what the pipeline will read.

    ``reads``: the datasets the pipeline uses (``echonet_raw``, ``params:fewshot`` ...);
    ``writes``: those it produces (``echonet_raw`` when it generates the synthetic data).
    """
    config = build_config(parameters)
    _check_benchmark_recipes(config)
    file_list = None
    if "echonet_raw" in reads:
        synthetic_default = _same_folder(config.echonet_root, config.synthetic.root)
        if not (synthetic_default and "echonet_raw" in writes):
            file_list = check_echonet_folder(config.echonet_root, synthetic_default)
    if "params:fewshot" in reads:
        if config.fewshot.split_file:
            from cardiac_pipeline.echo.kshot import read_split_table

            read_split_table(config.fewshot.split_file)
        elif file_list is not None:
            _check_has_train_videos(file_list, config.echonet_root, "fewshot")
    elif "params:benchmark" in reads and file_list is not None:
        _check_has_train_videos(file_list, config.echonet_root, "benchmark")
    if "params:predict" in reads:
        check_predict_inputs(config.predict)
    return config


def check_echonet_folder(root: str, synthetic_default: bool = False) -> Any:
    """The FileList of an EchoNet-format folder (``FileList.csv`` and ``Videos/``)."""
    from cardiac_pipeline.echo.echonet import FILE_LIST, VIDEOS_DIR, read_file_list

    path = Path(root).expanduser()
    fix = (
        "generate it with `kedro run --pipeline synthetic` (or run the fewshot pipeline)"
        if synthetic_default
        else "give the folder holding FileList.csv and Videos/ with "
        "--params=echonet_root=/path/to/folder (conf/local/globals.yml to keep it)"
    )
    if not path.is_dir():
        raise UserError(f"echonet_root {root!r}: folder not found; {fix}")
    if not any(path.iterdir()):
        raise UserError(f"echonet_root {root!r}: the folder is empty; {fix}")
    if not (path / FILE_LIST).is_file():
        raise UserError(
            f"echonet_root {root!r}: no {FILE_LIST}, so not an EchoNet-format folder; {fix}"
        )
    if not (path / VIDEOS_DIR).is_dir():
        raise UserError(
            f"echonet_root {root!r}: no {VIDEOS_DIR}/ folder of videos beside {FILE_LIST}; "
            f"put the videos in {VIDEOS_DIR}/"
        )
    return read_file_list(path / FILE_LIST, strict_ef=False)  # EchoNetFormatError: UserError


def _check_has_train_videos(file_list: Any, root: str, pipeline: str) -> None:
    if (file_list["Split"] == "TRAIN").any():
        return
    has_split = (file_list["Split"] != "UNSPECIFIED").any()
    found = (
        "its videos are all " + "/".join(sorted(set(file_list["Split"])))
        if has_split
        else ("it has no Split column")
    )
    fix = (
        "give the split with --params=fewshot.split_file=/path/split.csv "
        "(a CSV of FileName,Split with TRAIN, VAL and TEST rows)"
        if pipeline == "fewshot"
        else "the benchmark needs a Split column with TRAIN, VAL and TEST in FileList.csv"
    )
    raise UserError(f"echonet_root {root!r}: FileList.csv has no TRAIN video ({found}); {fix}")


def check_predict_inputs(predict: PredictConfig) -> None:
    """``predict.input_dir`` holds at least one video; the model to use is there."""
    from cardiac_pipeline.echo.inputs import list_videos

    if not predict.input_dir:
        raise UserError(
            "predict.input_dir is not set: kedro run --pipeline predict "
            "--params=predict.input_dir=/path/to/videos"
        )
    folder = Path(predict.input_dir).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"predict.input_dir {predict.input_dir!r}: folder not found; give the folder "
            "of your videos"
        )
    if not list_videos(folder):
        raise UserError(
            f"predict.input_dir {predict.input_dir!r}: no video in the folder (AVI, MP4 or "
            "DICOM files, not in subfolders); put the videos there or give another folder"
        )
    if predict.model:
        from cardiac_pipeline.model.predict import check_model

        check_model(str(predict.model))  # missing, not a checkpoint, another kind, no model
    elif not any(Path(predict.models_dir).glob("**/*.pt")):
        raise UserError(
            f"predict.models_dir {predict.models_dir!r}: no fewshot model yet; run "
            "`kedro run --pipeline fewshot` first, or give predict.model"
        )


def _check_benchmark_recipes(config: ProjectConfig) -> None:
    """Every benchmark method's recipe of the chosen variant (keys of nested overrides)."""
    from cardiac_pipeline.config import RECIPE_SECTIONS, Recipe
    from cardiac_pipeline.model.benchmark import benchmark_recipe

    fewshot = Recipe(**{name: getattr(config, name) for name in RECIPE_SECTIONS})
    benchmark_recipe(fewshot, config.benchmark)


def _same_folder(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


class ValidationHook:
    """Refuses a run with wrong parameters or input folders before any node runs."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        parameters = catalog.load("parameters")
        check_run(parameters, reads=set(pipeline.all_inputs()), writes=set(pipeline.all_outputs()))
        logger.info("parameters and inputs checked")
