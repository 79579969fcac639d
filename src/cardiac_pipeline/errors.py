"""Which errors are the user's to fix, and which are the program's: the one place that says it.

A **user error** (``UserError``) is something the person running the pipeline caused and
can fix without touching the code. Its message is one line that names the file or the
parameter key, says what is wrong and how to fix it. ``kedro run`` (through
``cardiac_pipeline.cli``) prints it as ``Error: <message>`` on stderr and exits with
status 2, without a traceback. User errors are:

- parameters: an unknown section or key (with the closest known name), a value of the
  wrong type or out of range (``training.epochs=0``, ``fewshot.shots=4`` instead of
  ``[4]``), a missing required key;
- folders and files: ``echonet_root`` missing, empty or without ``FileList.csv`` and
  ``Videos/``; ``fewshot.split_file`` missing or unreadable; ``predict.input_dir`` unset,
  missing or without a video; ``predict.model`` that is not there; no fewshot model to
  predict with;
- data: an unreadable or malformed CSV (``FileList.csv``, ``VolumeTracings.csv``, a split
  file: ``echo.echonet.EchoNetFormatError`` is a ``UserError``), a folder whose videos
  leave no TRAIN video for the few-shot protocol (give ``fewshot.split_file``).

Everything else is a **program error** (a bug, a full disk, a library failure): it keeps
its full traceback and exit status 1, because its cause is in code, not in the input.

Most user errors are found before the first node runs (``validation.ValidationHook``);
those that need the data (a split file naming videos the index rejected) stop the node.
``UserError`` is a ``ValueError``, so code that catches ``ValueError`` keeps working.
"""

from __future__ import annotations

#: exit status of ``kedro run`` on a user error (program errors exit with 1)
USER_ERROR_EXIT_CODE = 2


class UserError(ValueError):
    """Wrong input (parameters, folders, files) that the user can fix; one-line message."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (line breaks of a wrapped message joined)."""
    return " ".join(str(error).split())
