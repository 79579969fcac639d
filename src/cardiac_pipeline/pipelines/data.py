"""What a training pipeline needs before its models: only the steps its parameters call for.

- The synthetic target dataset is generated only when ``echonet_root`` is the synthetic
  folder (``synthetic.root``); any other root is read as it is, never written or created.
- The source corpus, its clip store and pretraining run only when some model starts from
  the pretrain pipeline's checkpoint (``backbone.pretrained: pretrain`` with a backbone
  that does not bring its own weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.pipeline import Pipeline

from cardiac_pipeline.config import section
from cardiac_pipeline.model.backbone import brings_own_weights
from cardiac_pipeline.model.recipe import PRETRAIN_CHECKPOINT


def uses_synthetic_target(parameters: dict[str, Any]) -> bool:
    """``echonet_root`` is the embedded synthetic dataset's folder."""
    root = Path(str(parameters["echonet_root"])).expanduser().resolve()
    return root == Path(section("synthetic", parameters["synthetic"]).root).expanduser().resolve()


def starts_from_pretraining(backbone: Any) -> bool:
    """The backbone section asks for the pretrain pipeline's checkpoint."""
    backbone = section("backbone", backbone)
    return str(backbone.pretrained) == PRETRAIN_CHECKPOINT and not brings_own_weights(backbone.name)


def data_pipeline(parameters: dict[str, Any], *, pretraining: bool) -> Pipeline:
    """(synthetic ->) ingestion -> preprocessing (+ pretraining when asked for)."""
    from cardiac_pipeline.pipelines import ingestion, preprocessing, pretrain, synthetic

    if uses_synthetic_target(parameters):
        # ingestion reads the folder the synthetic node wrote (an edge kedro can see)
        steps = synthetic.create_pipeline() + Pipeline(
            ingestion.create_pipeline(), inputs={"echonet_raw": "synthetic_echonet"}
        )
    else:
        steps = ingestion.create_pipeline()
    steps += preprocessing.create_pipeline()
    if pretraining:
        steps += pretrain.create_pipeline()
    return steps
