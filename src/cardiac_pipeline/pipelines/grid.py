"""What the two grid pipelines (fewshot, benchmark) share: one model or split per namespace.

Each grid pipeline is one Kedro namespace (``fewshot``, ``benchmark``) that ``kedro viz``
collapses and a deployment plugin maps to tasks; inside it, one namespace per model or
split (``fewshot.k1_seed0``). A namespace is valid only when no path leaves it and comes
back, so what every model reads is made before the models and outside their namespaces:
the splits (``<grid>.splits.<name>``, one node each), then the frame-feature store of all
their videos (``<grid>.build_frame_features``). The node names say where a node belongs;
the dataset names stay those of ``conf/base/catalog.yml``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, update_wrapper
from typing import Any

from kedro.pipeline import Node

SPLITS = "splits"  # the sub-namespace of the split nodes: <grid>.splits.<name>


def bound(func: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """``func`` with keyword arguments fixed, keeping its name and docs (kedro viz shows them)."""
    return update_wrapper(partial(func, **kwargs), func)


def split_node(
    grid: str, name: str, sample: Callable[..., Any], inputs: list[str], output: str
) -> Node:
    """The node that samples split ``name`` into ``<grid>.<name>.<output>``."""
    return Node(
        sample,
        inputs=inputs,
        outputs=f"{grid}.{name}.{output}",
        name=name,
        namespace=f"{grid}.{SPLITS}",
    )


def frame_features_node(
    grid: str, build: Callable[..., Any], splits: list[str], pretraining: bool
) -> Node:
    """The one node that builds or updates the frame-feature store for the videos of
    ``splits`` (the cached adaptation modes train and predict on it); ``build``: the node
    function (``fewshot.nodes.build_frame_features``)."""
    return Node(
        bound(build, with_checkpoint=pretraining),
        inputs=[
            "clip_store",
            "frame_features_folder",
            "params:backbone",
            "params:cardiac_clip",
            "params:clips",
            "params:training",
            *(["pretrained_backbone"] if pretraining else []),
            *splits,
        ],
        outputs="frame_features",
        name="build_frame_features",
        namespace=grid,
    )
