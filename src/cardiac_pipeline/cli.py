"""``kedro run`` for this project: Kedro's own command, with user errors on one line.

Kedro uses this module's ``cli`` group in place of its built-in project commands of the
same name. ``run`` takes exactly Kedro's options; a ``UserError`` (``errors.py`` says
which errors are the user's) ends it with ``Error: <message>`` on stderr and exit status
2, without a traceback. Program errors propagate unchanged, traceback included.
"""

from __future__ import annotations

from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run

from cardiac_pipeline.errors import USER_ERROR_EXIT_CODE, UserError, one_line


@click.group(name="cardiac_pipeline")
def cli() -> None:
    """Project commands."""


def _run(**kwargs: Any) -> Any:
    try:
        return kedro_run.callback(**kwargs)
    except UserError as error:
        click.echo(f"Error: {one_line(error)}", err=True)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None


# module-level ``run``: what ``python -m cardiac_pipeline`` (kedro's find_run_command) calls
run = click.Command(
    name="run",
    callback=_run,
    params=list(kedro_run.params),
    help=kedro_run.help,
    short_help=kedro_run.short_help,
)
cli.add_command(run)
