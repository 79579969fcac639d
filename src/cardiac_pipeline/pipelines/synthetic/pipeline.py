"""``kedro run --pipeline synthetic``: write the embedded EchoNet-format dataset.

It writes only ``synthetic.root`` (``synthetic_echonet`` in the catalog), never the
``echonet_root`` a user points at; fewshot and benchmark include it only when
``echonet_root`` is that folder.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import generate_synthetic_echonet


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                generate_synthetic_echonet,
                inputs="params:synthetic",
                outputs="synthetic_echonet",
                name="generate_synthetic_echonet",
            )
        ]
    )
