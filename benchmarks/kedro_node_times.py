"""Per-node wall times and shares from the terminal log of a sequential ``kedro run``.

Reads Kedro's rich console log (the ``Running node:`` records and their ``[date time]``
stamps, one-second resolution) and prints each node's seconds and share of the run;
nodes whose names share a prefix up to the first dot are also summed (``fewshot.k1_seed0``).

    python benchmarks/kedro_node_times.py run.log [other.log ...]
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STAMP = re.compile(r"\[(\d\d/\d\d/\d\d \d\d:\d\d:\d\d)\]")
MESSAGE = slice(29, 68)  # rich's message column at the default 80-column width


def node_starts(text: str) -> list[tuple[datetime, str]]:
    """(time, node name) of every ``Running node:`` record, then ("end") at the last stamp."""
    lines = ANSI.sub("", text).replace("\r", "\n").splitlines()
    events, now, i = [], None, 0
    while i < len(lines):
        for stamp in STAMP.findall(lines[i]):
            now = datetime.strptime(stamp, "%m/%d/%y %H:%M:%S")
        if "Running node:" in lines[i]:
            message = lines[i][lines[i].index("Running node:") + 13 :].split("node.py")[0]
            j = i + 1
            while j < len(lines) and lines[j].startswith(" " * 29) and ":" not in message:
                message += lines[j][MESSAGE].strip()
                j += 1
            events.append((now, message.strip().split(":")[0].strip()))
        i += 1
    events.append((now, "end"))
    return events


def node_seconds(text: str) -> dict[str, float]:
    starts = node_starts(text)
    return {
        name: (starts[k + 1][0] - when).total_seconds()
        for k, (when, name) in enumerate(starts[:-1])
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    for path in parser.parse_args().logs:
        seconds = node_seconds(path.read_text(errors="replace"))
        total = sum(seconds.values())
        print(f"{path}: {total:.0f} s over {len(seconds)} nodes")
        groups: dict[str, float] = {}
        for name, value in seconds.items():
            group = name.split(".")[0]  # fewshot.k1_seed0.train -> fewshot
            groups[group] = groups.get(group, 0.0) + value
        for name, value in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"  {name:40s} {value:6.0f} s {100 * value / max(total, 1):5.1f} %")


if __name__ == "__main__":
    main()
