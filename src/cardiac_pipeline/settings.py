"""Kedro project settings: hooks and config loader."""

from kedro.config import OmegaConfigLoader

from cardiac_pipeline.hooks import EndOfRunHook, MlflowTrackingHook
from cardiac_pipeline.pipeline_registry import ProjectParametersHook
from cardiac_pipeline.validation import ValidationHook

# ProjectParametersHook: the pipelines are built from the run's parameters (the grid).
# pluggy calls the last registered first: parameters and inputs are checked before the
# MLflow run opens (validation.py); the last screen is printed after the MLflow run ends
HOOKS = (EndOfRunHook(), MlflowTrackingHook(), ProjectParametersHook(), ValidationHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
    # conf/local/parameters.yml may override one nested key without restating its siblings
    "merge_strategy": {"parameters": "soft"},
}

# Tracking is this project's own hook (hooks.py); a kedro-mlflow install would read the same
# mlflow.yml with another schema, so its auto-registered hook is switched off.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow",)
