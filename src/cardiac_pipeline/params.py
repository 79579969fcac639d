"""Checks of parameter sections: a misspelt key fails the run instead of being ignored.

Without them ``training: {lerning_rate: ...}`` or a benchmark ablation with
``cardiacclip: {scales: [1]}`` would run on the defaults and report numbers under a name
that does not describe them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from cardiac_pipeline.errors import UserError


def check_keys(
    section: str,
    values: Mapping[str, Any] | None,
    allowed: Iterable[str],
    moved: Mapping[str, str] | None = None,
) -> None:
    """Raise ``UserError`` naming every key of ``values`` that is not in ``allowed``.

    ``section`` is the parameter path shown to the user (``training``,
    ``benchmark.methods.cardiac_clip``; empty for the top level, whose keys are the
    sections); ``moved`` maps retired keys to where they went.
    """
    if values is None:
        return
    where = f"parameters {section!r}" if section else "parameters"
    what = "key(s)" if section else "section(s)"
    if not isinstance(values, Mapping):
        raise UserError(f"{where}: expected a mapping of keys to values, got {values!r}")
    allowed = sorted(set(allowed))
    problems = []
    for key in values:
        if key in allowed:
            continue
        if moved and key in moved:
            problems.append(f"{key!r} is now {moved[key]}")
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1)
        problems.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if problems:
        raise UserError(
            f"{where}: unknown {what} {'; '.join(problems)}; "
            f"fix the spelling in conf/ or --params (known: {', '.join(allowed)})"
        )
