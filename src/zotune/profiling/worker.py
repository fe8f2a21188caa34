"""The process that takes one isolated measurement:
``python -m zotune.profiling.worker --spec JSON --out FILE``
(:func:`zotune.profiling.measurement.measure_isolated` starts it).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..utils.files import atomic_write_text
from .measurement import measure
from .spec import ProfileSpec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zotune.profiling.worker")
    parser.add_argument("--spec", required=True, help="a ProfileSpec as JSON")
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    result = measure(ProfileSpec(**json.loads(args.spec)), isolated=True)
    atomic_write_text(Path(args.out), json.dumps(result.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
