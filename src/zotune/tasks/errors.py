"""The one error type task loading raises."""

from __future__ import annotations


class TaskDataError(ValueError):
    """Task data cannot be found, read or labelled.

    The message is one line that names the culprit: the data directory, the missing path, the
    file and line of a malformed row, or the label value that is out of range.
    """
