"""The five LVEF ranges (names, bin values, clinical text): shared by prompts, predictions
and reports, so plain modules (reports, tables) need not import the torch layer."""

from __future__ import annotations

import re
from dataclasses import dataclass

EF_PROMPT_PREFIX = "THE LEFT VENTRICULAR EJECTION FRACTION IS ESTIMATED TO BE"


@dataclass(frozen=True)
class LVEFRange:
    """One LVEF range: its name in the prompt, the bin value used for regression, its text."""

    name: str
    bin_value: float
    description: str

    @property
    def prompt(self) -> str:
        return f"{EF_PROMPT_PREFIX} {self.name}. {self.description}"


LVEF_RANGES: tuple[LVEFRange, ...] = (
    LVEFRange(
        "SEVERELY REDUCED (LESS THAN 30%)",
        15.0,
        "THE LEFT VENTRICLE IS DILATED WITH SEVERE GLOBAL HYPOKINESIS AND VERY POOR WALL THICKENING.",
    ),
    LVEFRange(
        "MODERATELY REDUCED (30-44%)",
        37.0,
        "LEFT VENTRICULAR CONTRACTILITY IS MODERATELY DECREASED WITH REDUCED WALL MOTION.",
    ),
    LVEFRange(
        "MILDLY REDUCED (45-54%)",
        50.0,
        "LEFT VENTRICULAR SYSTOLIC FUNCTION IS MILDLY DECREASED WITH MILD HYPOKINESIS.",
    ),
    LVEFRange(
        "NORMAL (55-70%)",
        62.0,
        "LEFT VENTRICULAR SIZE AND WALL THICKNESS ARE NORMAL WITH NORMAL WALL MOTION.",
    ),
    LVEFRange(
        "HYPERDYNAMIC (GREATER THAN 70%)",
        85.0,
        "THE LEFT VENTRICLE IS SMALL AND VIGOROUSLY CONTRACTING WITH NEAR CAVITY OBLITERATION.",
    ),
)
# the predictions table's column of each range's probability, in range order
RANGE_COLUMNS: tuple[str, ...] = tuple(
    "p_" + re.sub(r"[^a-z0-9]+", "_", r.name.lower()).strip("_") for r in LVEF_RANGES
)
