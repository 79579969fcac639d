"""The fewshot and benchmark pipelines are built from the parameter grid, and include the
synthetic-data and pretraining steps only when the run needs them."""

from __future__ import annotations

import pytest

from cardiac_pipeline.pipelines.benchmark.pipeline import create_pipeline as benchmark_pipeline
from cardiac_pipeline.pipelines.fewshot.nodes import check_grid
from cardiac_pipeline.pipelines.fewshot.pipeline import create_pipeline as fewshot_pipeline
from tests.conftest import _deep_merge, conf_base_parameters

BASE = _deep_merge(
    conf_base_parameters(),
    {
        "echonet_root": "data/01_raw/echonet_synthetic",
        "synthetic": {"root": "data/01_raw/echonet_synthetic"},
        "fewshot": {"shots": [1, 2], "seeds": [0, 1], "val_size": 4},
        "backbone": {"name": "echo-vit-tiny", "pretrained": "pretrain"},
    },
)


def _names(pipeline) -> set[str]:
    return {node.name for node in pipeline.nodes}


def test_one_namespace_per_k_and_seed_with_its_own_split_model_and_metrics():
    pipeline = fewshot_pipeline(parameters=BASE)
    names = _names(pipeline)
    for model in ("k1_seed0", "k1_seed1", "k2_seed0", "k2_seed1"):
        assert {f"fewshot.{model}.{step}" for step in ("train", "evaluate")} <= names
        assert f"fewshot.splits.{model}" in names  # before the shared frame features
        assert f"fewshot.{model}.model" in pipeline.all_outputs()
        assert f"fewshot.{model}.k_shot_split" in pipeline.all_outputs()
    assert {"fewshot.combine_metrics", "fewshot.summarise_over_seeds"} <= names
    one = pipeline.only_nodes_with_namespaces(["fewshot.k2_seed1"])
    assert _names(one) == {f"fewshot.k2_seed1.{s}" for s in ("train", "evaluate")}
    splits = pipeline.only_nodes_with_namespaces(["fewshot.splits"])
    assert len(splits.nodes) == 4 and splits.inputs() == {"video_index", "params:fewshot"}


def test_a_split_file_is_one_model():
    pipeline = fewshot_pipeline(
        parameters={**BASE, "fewshot": {**BASE["fewshot"], "split_file": "s.csv"}}
    )
    assert "fewshot.user_split.train" in _names(pipeline)
    assert not [n for n in _names(pipeline) if n.startswith("fewshot.k")]


def test_synthetic_data_and_pretraining_only_when_asked_for(tmp_path):
    default = _names(fewshot_pipeline(parameters=BASE))
    assert {
        "generate_synthetic_echonet",
        "generate_pretrain_corpus",
        "pretrain_backbone",
    } <= default
    own = _names(
        fewshot_pipeline(
            parameters={
                **BASE,
                "echonet_root": str(tmp_path / "EchoNet-Dynamic"),
                "backbone": {**BASE["backbone"], "pretrained": str(tmp_path / "w.pt")},
            }
        )
    )
    assert not {n for n in own if "synthetic" in n or "pretrain" in n}
    assert {"ingest_echonet", "build_clip_store", "fewshot.k1_seed0.train"} <= own
    hub = _names(
        fewshot_pipeline(
            parameters={**BASE, "backbone": {**BASE["backbone"], "name": "hf-hub:x/y"}}
        )
    )
    assert "pretrain_backbone" not in hub and "generate_synthetic_echonet" in hub


def test_a_grid_changed_after_the_pipeline_was_built_fails_naming_the_key():
    with pytest.raises(ValueError, match=r"fewshot.*k1_seed0.*conf/"):
        check_grid({**BASE["fewshot"], "shots": [1], "seeds": [0]}, built=["k1_seed0", "k1_seed1"])
    check_grid({**BASE["fewshot"], "shots": [1], "seeds": [0, 1]}, built=["k1_seed1", "k1_seed0"])


def test_benchmark_one_node_per_method_and_split_and_one_zero_shot_model():
    quick = {"shots": [1, 4], "seeds": [0], "methods": ["zero_shot", "cardiac_clip"]}
    benchmark = _deep_merge(BASE["benchmark"], {"variant": "quick", "variants": {"quick": quick}})
    names = _names(benchmark_pipeline(parameters={**BASE, "benchmark": benchmark}))
    for split in ("k1_seed0", "k4_seed0"):
        assert {
            f"benchmark.{split}.{m}" for m in ("constants", "zero_shot", "cardiac_clip")
        } <= names
        assert f"benchmark.splits.{split}" in names
    assert [n for n in names if n.endswith(".predict")] == ["benchmark.zero_shot.predict"]
    assert {"benchmark.combine_metrics", "benchmark.summarise", "pretrain_backbone"} <= names
