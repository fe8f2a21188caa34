"""Tasks as data: their declarations and templates, the user's task files, sources, splits.

The suite: SST-2, COPA, WinoGrande, MultiRC (the paper's four) and RTE, CB, BoolQ, WSC, WiC
(the rest of MeZO's), then MeZO's generation tasks SQuAD and DROP (scored by F1) and ReCoRD,
each declared as data; and the user's own, from a YAML task file.

* :mod:`.spec`: the TaskSpec type (data sources, templates, labels, paper loss, val size);
* :mod:`.templates`: the prompt templates (ZO-Bench's strings by default, zotune 0.1's as a
  named version, and without task alignment);
* :mod:`.builtin`: the built-in task declarations, :func:`get_task` and :func:`list_tasks`;
* :mod:`.taskfile`: a task file → the same TaskSpec (``zotune train --task task.yaml``);
  :mod:`.check`: ``zotune tasks --check``;
* :mod:`.formats`: GLUE TSV / JSONL readers and per-task row normalizers;
* :mod:`.sources`: local data directory or Hugging Face hub → labelled pools;
* :mod:`.splits`: ZO-Bench's seeded train / val / test draw (a data seed apart from the run
  seed) and the carving rule;
* :mod:`.catalog`: the templates and data files as Markdown (``zotune tasks --markdown``).

>>> splits = load_splits("sst2", data_dir="data", num_train=16)  # doctest: +SKIP
>>> splits.train[0].contexts[0]  # doctest: +SKIP
"a gorgeous , witty , seductive movie . It was"
"""

from .builtin import get_task, list_tasks
from .errors import TaskDataError
from .example import Example
from .sources import DATA_DIR_ENV
from .spec import TaskSpec
from .splits import Splits, load_splits

__all__ = [
    "DATA_DIR_ENV",
    "Example",
    "Splits",
    "TaskDataError",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "load_splits",
]
