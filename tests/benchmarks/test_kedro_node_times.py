"""Node times are read from Kedro's rich console log, names wrapped over lines included."""

from __future__ import annotations

import importlib.util

from tests.conftest import PROJECT_ROOT

_spec = importlib.util.spec_from_file_location(
    "kedro_node_times", PROJECT_ROOT / "benchmarks" / "kedro_node_times.py"
)
kedro_node_times = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kedro_node_times)

PAD = " " * 29
LOG = "\n".join(
    [
        "[12/06/26 09:35:55] INFO     Running node: generate_pretrain_corpus: node.py:531",
        f"{PAD}generate_pretrain_corpus([params:pretra            ",
        "progress 10%\rprogress 100%",
        "[12/06/26 09:37:09] INFO     Completed node:                       runner.py:245",
        "                    INFO     Running node:                           node.py:531",
        f"{PAD}generate_synthetic_echonet:                        ",
        f"{PAD}generate_synthetic_echonet([params:echo            ",
        "[12/06/26 09:38:57] INFO     Completed node:                       runner.py:245",
        "                    INFO     Running node: ingest_echonet:           node.py:531",
        "[12/06/26 09:39:00] INFO     Pipeline execution completed successfully.",
    ]
)


def test_each_node_runs_until_the_next_starts() -> None:
    assert kedro_node_times.node_seconds(LOG) == {
        "generate_pretrain_corpus": 74.0,
        "generate_synthetic_echonet": 108.0,
        "ingest_echonet": 3.0,
    }
