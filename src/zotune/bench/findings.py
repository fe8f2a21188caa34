"""The paper's findings, checked against the published stores.

    python -m zotune.bench.findings docs/results --out docs/results/findings.md

Each finding is data: a claim, the suite whose store (``ROOT/<suite>/``) measures it, and
contrasts Σ_k c_k · score(cell_k) that the claim says are positive — "FO beats ZO on LoRA" is
fo-sgd/lora − zo-sgd/lora > 0, "the template matters more for ZO than for FO" is
(ZO with − ZO without) − (FO with − FO without) > 0. A contrast is estimated on the cells'
shared test examples with the paired bootstrap (:func:`zotune.bench.intervals.
contrast_interval`); where a record predates per-example scores, from the cells' accuracies
as independent binomials (wider, and said so). Its verdict:

- **yes**: the 95% interval lies above 0 (for a "no worse than" claim: above −margin);
- **reversed**: it lies below 0 (below −margin);
- **not separated**: it straddles, so this test set cannot tell;
- **queued**: a cell has no finished run yet (the store grows across sessions);
- **untrained cell**: a cell's chosen runs were best on validation at step 0, so it shows the
  initial model (its grid needs a larger learning rate), or gave every test example the same
  class, a constant predictor; either way the contrast says nothing about its optimizer.

Cells are chosen on validation (:mod:`zotune.bench.selection`), never on test. A finding
that claims faster convergence (``time_to_accuracy``) also says each cell's forward passes to
ZO-SGD's best validation accuracy, where its runs end since they keep their best checkpoint
(:mod:`zotune.bench.time_to_accuracy`), as measured, without an interval.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.files import atomic_write_text
from ..utils.tables import markdown_table
from .compare import NoRunsRecorded, NotFinished, Side, StoreView, check_comparable
from .intervals import CONFIDENCE, contrast_interval, unpaired_contrast_interval, z_score
from .report import PAPER_SST2_OPT_1_3B
from .selection import UNTRAINED_MEANING
from .store import store_exists
from .time_to_accuracy import Reach, times_to_accuracy

SCHEMES = ("full", "lora", "prefix", "prompt")
# "Keeps FO's accuracy" is a claim of no loss, which no interval can show to be exactly 0:
# it holds when the loss is below this many points (5 points is about what 200 test examples
# resolve).
NONINFERIORITY_MARGIN = 0.05


@dataclass(frozen=True)
class Contrast:
    """Σ coefficient · score(cell) over ``terms``, in the section of ``task``."""

    label: str
    terms: tuple[tuple[float, str], ...]
    task: str = "sst2"


@dataclass(frozen=True)
class Finding:
    """A claim (a few words: it heads its row of the summary table) and its precise form in
    ``detail`` (which cells, at what budget or margin), said under its section."""

    claim: str
    suite: str
    contrasts: tuple[Contrast, ...]
    margin: float = 0.0  # the claim holds above −margin (0: a strict improvement)
    # Also say how many forward passes each cell took to reach the validation accuracy at
    # which ZO-SGD ends (zotune.bench.time_to_accuracy): a claim of faster convergence.
    time_to_accuracy: bool = False
    detail: str = ""


def difference(a: str, b: str, task: str = "sst2") -> Contrast:
    return Contrast(f"{a} − {b}", ((1.0, a), (-1.0, b)), task)


def drop_beyond(optimizer: str, reference: str, task: str = "sst2") -> Contrast:
    """How much more ``optimizer`` loses from LoRA to prompt tuning than ``reference`` does."""
    return Contrast(
        f"({optimizer} lora − prompt) − ({reference} lora − prompt)",
        ((1.0, f"{optimizer}/lora"), (-1.0, f"{optimizer}/prompt"),
         (-1.0, f"{reference}/lora"), (1.0, f"{reference}/prompt")),
        task,
    )


# The ZO methods that came after ZO-Bench, each against MeZO (ZO-SGD) at an equal budget of
# forward passes (the cpu-frontier suite gives every ZO method the same one), with the claim
# its authors make.
FRONTIER_CLAIMS = {
    "lozo": "LOZO converges faster than MeZO",
    "lozo-m": "LOZO-M converges faster than MeZO",
    "subzero": "SubZero converges faster than MeZO",
    "hizoo": "HiZOO converges faster than MeZO",
    "mezo-svrg": "MeZO-SVRG converges faster than MeZO",
    "sparse-mezo": "Sparse-MeZO trains better than MeZO",
}
# What each method is, and what its budget counts.
FRONTIER_METHODS = {
    "lozo": "LOZO: low-rank perturbations",
    "lozo-m": "LOZO-M: LOZO with momentum on the low-rank factor",
    "subzero": "SubZero: random-subspace perturbations",
    "hizoo": "HiZOO: diagonal-Hessian-scaled directions, its third forward pass counted",
    "mezo-svrg": "MeZO-SVRG: variance reduction, its anchor batches counted",
    "sparse-mezo": "Sparse-MeZO: perturbing only small-magnitude weights",
}
FRONTIER_SCHEMES = ("full", "lora")


FINDINGS = (
    Finding(
        "FO beats ZO at the same scheme",
        "cpu",
        tuple(difference(f"fo-{rule}/{s}", f"zo-{rule}/{s}")
              for rule in ("sgd", "adam") for s in SCHEMES),
        detail="FO-SGD against ZO-SGD and FO-Adam against ZO-Adam, on each scheme.",
    ),
    Finding(
        "ZO-Adam and ZO-SGD-Sign suffer most on prompt tuning",
        "cpu",
        (drop_beyond("zo-adam", "zo-sgd"), drop_beyond("zo-sgd-sign", "zo-sgd")),
        detail="Their drop from LoRA to prompt tuning, against ZO-SGD's.",
    ),
    Finding(
        "Forward-Grad sits between ZO and FO",
        "cpu",
        tuple(c for s in SCHEMES for c in (difference(f"forward-grad/{s}", f"zo-sgd/{s}"),
                                           difference(f"fo-sgd/{s}", f"forward-grad/{s}"))),
        detail="Above ZO-SGD and below FO-SGD, on each scheme.",
    ),
    Finding(
        "The prompt template matters more for ZO than for FO",
        "cpu-studies",
        (Contrast(
            "(ZO-SGD template − none) − (FO-SGD template − none)",
            ((1.0, "zo-sgd/full/template"), (-1.0, "zo-sgd/full/no-template"),
             (-1.0, "fo-sgd/full/fo-template"), (1.0, "fo-sgd/full/fo-no-template")),
        ), difference("zo-sgd/full/template", "zo-sgd/full/no-template")),
        detail="ZO-SGD's gain from the template against FO-SGD's, then ZO-SGD's alone.",
    ),
    Finding(
        "Sparsity-induced ZO (about 20%) helps",
        "cpu-studies",
        (difference("zo-sgd/full/sparsity-0.2", "zo-sgd/full/dense"),),
        detail="ZO-SGD perturbing 80% of the weights against all of them.",
    ),
    Finding(
        "Hybrid ZO/FO keeps FO's accuracy",
        "cpu-studies",
        (difference("zo-sgd/full/hybrid-k10", "zo-sgd/full/hybrid-k0-fo"),),
        margin=NONINFERIORITY_MARGIN,
        detail=f"ZO on the first 10 of 30 layers against FO on all: no loss beyond "
               f"{NONINFERIORITY_MARGIN * 100:.0f} points.",
    ),
    Finding(
        "Block-wise ZO beats ZO-SGD at an equal forward budget",
        "cpu-studies",
        (difference("zo-sgd/full/block-layer", "zo-sgd/full/q32-matched"),),
        detail="One estimate per layer against ZO-SGD averaging q = 32 directions, at the "
               "same forward passes per step.",
    ),
    Finding(
        "zotune's CPU settings train no worse",
        "cpu-settings",
        (difference("zo-sgd/full/table-fp32", "zo-sgd/full/gaussian-fp32"),
         difference("zo-sgd/full/bf16-sr", "zo-sgd/full/table-fp32")),
        margin=NONINFERIORITY_MARGIN,
        detail="Noise-table directions against Gaussian ones, and bf16 weights with "
               "stochastically rounded updates against fp32: no loss beyond "
               f"{NONINFERIORITY_MARGIN * 100:.0f} points.",
    ),
    Finding(
        "COPA and WinoGrande: FO beats ZO",
        "cpu-copa-winogrande",
        tuple(difference(f"fo-sgd/{s}", f"zo-sgd/{s}", task)
              for task in ("copa", "winogrande") for s in ("lora", "full")),
        detail="FO-SGD against ZO-SGD, on LoRA and full fine-tuning.",
    ),
    Finding(
        "COPA and WinoGrande: Forward-Grad sits between ZO and FO",
        "cpu-copa-winogrande",
        tuple(c for task in ("copa", "winogrande")
              for c in (difference("forward-grad/lora", "zo-sgd/lora", task),
                        difference("fo-sgd/lora", "forward-grad/lora", task))),
        detail="Above ZO-SGD and below FO-SGD, on LoRA.",
    ),
    *(Finding(claim, "cpu-frontier",
              tuple(difference(f"{method}/{s}", "zo-sgd/" + s) for s in FRONTIER_SCHEMES),
              time_to_accuracy=True,
              detail=f"{FRONTIER_METHODS[method]}; against MeZO (ZO-SGD), test accuracy at an "
                     "equal forward budget.")
      for method, claim in FRONTIER_CLAIMS.items()),
)


@dataclass
class Estimate:
    """A contrast as measured: its value and interval (fractions), how, and the verdict."""

    contrast: Contrast
    value: float | None = None
    low: float | None = None
    high: float | None = None
    method: str = ""
    verdict: str = "queued"
    missing: list[str] = field(default_factory=list)
    untrained: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)  # cells whose choice may still change
    reaches: str = ""  # each cell's forward passes to ZO-SGD's best validation, where asked


def estimate(contrast: Contrast, view: StoreView, margin: float) -> Estimate:
    """``contrast`` on the cells of ``view``, with its verdict against ``−margin``."""
    result = Estimate(contrast)
    sides: list[Side] = []
    for _, name in contrast.terms:
        try:
            sides.append(view.side(name))
        except NotFinished:
            result.missing.append(name)
    if result.missing:
        return result
    check_comparable(sides)
    coefficients = [c for c, _ in contrast.terms]
    scores = [side.scores for side in sides]
    examples = sides[0].examples
    if all(s is not None for s in scores):
        value, low, high = contrast_interval(scores, coefficients)
        result.method = f"paired bootstrap over {examples} examples"
    elif sides[0].metric == "accuracy":
        value, low, high = unpaired_contrast_interval(
            [s.mean for s in sides], [s.examples for s in sides], coefficients
        )
        result.method = f"unpaired binomial over {examples} examples (a record predates " \
            "per-example scores)"
    else:
        result.verdict = "needs per-example scores"
        return result
    seeded = [(c, side) for c, side in zip(coefficients, sides, strict=True)
              if side.seed_std is not None]
    if seeded:
        low, high = widened(value, low, high, [c * side.seed_std / math.sqrt(side.seeds)
                                               for c, side in seeded])
        result.method += ", widened by the seeds' spread"
    result.value, result.low, result.high = value, low, high
    result.untrained = [side.name for side in sides if side.untrained]
    result.partial = [side.name for side in sides if side.partial]
    if result.untrained:
        result.verdict = "untrained cell"
    elif low > -margin:
        result.verdict = "yes"
    elif high < -margin:
        result.verdict = "reversed"
    else:
        result.verdict = "not separated"
    return result


def widened(value: float, low: float, high: float, seed_errors: list[float]) -> tuple[float, float]:
    """A test-set interval widened in quadrature by the standard errors the seeds add: the
    seeds of a cell share its test examples, so their spread is the optimizer's run-to-run
    variation, which the bootstrap over examples does not see."""
    extra = z_score() * math.sqrt(sum(e * e for e in seed_errors))
    return (value - math.hypot(value - low, extra), value + math.hypot(high - value, extra))


def paper_value(contrast: Contrast) -> float | None:
    """The contrast on ZO-Bench's SST-2 / OPT-1.3B table, where it has every cell (points)."""
    if contrast.task != "sst2":
        return None
    total = 0.0
    for coefficient, name in contrast.terms:
        optimizer, scheme, *variant = name.split("/")
        if variant or scheme not in PAPER_SST2_OPT_1_3B.get(optimizer, {}):
            return None
        total += coefficient * PAPER_SST2_OPT_1_3B[optimizer][scheme]
    return total


def check(
    root: Path, findings: Sequence[Finding] = FINDINGS
) -> list[tuple[Finding, list[Estimate]]]:
    """Every finding's contrasts, estimated from the stores under ``root``."""
    checked = []
    views: dict[tuple[str, str], StoreView | str] = {}
    reaches: dict[tuple[str, str], dict[str, Reach]] = {}
    for finding in findings:
        estimates = []
        for contrast in finding.contrasts:
            key = (finding.suite, contrast.task)
            folder = root / finding.suite
            if key not in views:
                views[key] = open_view(folder, finding.suite, contrast.task)
            view = views[key]
            if not isinstance(view, StoreView):
                estimates.append(Estimate(contrast, missing=[view]))
                continue
            estimates.append(estimate(contrast, view, finding.margin))
            if finding.time_to_accuracy:
                if key not in reaches:
                    reaches[key] = {f"{r.curve.optimizer}/{r.curve.scheme}": r
                                    for section in view.sections
                                    for r in times_to_accuracy(section, folder)}
                estimates[-1].reaches = reach_text(contrast, reaches[key])
        checked.append((finding, estimates))
    return checked


def open_view(folder: Path, suite: str, task: str) -> StoreView | str:
    """The store of ``suite`` at ``folder`` narrowed to ``task``, or what it is waiting for."""
    if not store_exists(folder):
        return f"the {suite} store"
    try:
        return StoreView(folder, suite=suite, task=task)
    except NoRunsRecorded:
        return f"a finished run of the {suite} store"


def reach_text(contrast: Contrast, reaches: dict[str, Reach]) -> str:
    """``"lozo/full 480, zo-sgd/full 960 of 960 (target 71.0)"``: each cell's forward passes
    to the target, the passes it ran where it fell short; empty while no cell has a curve."""
    parts, target = [], None
    for _, name in contrast.terms:
        item = reaches.get(name)
        if item is None:
            parts.append(f"{name} no curve yet")
            continue
        target = item.target
        ran = item.curve.passes[-1]
        if item.step == 0:
            parts.append(f"{name} 0 (the initial model scores it)")
        elif item.reached:
            parts.append(f"{name} {item.forward_passes:,.0f} of {ran:,.0f}")
        else:
            parts.append(f"{name} not in {ran:,.0f} (best {item.best * 100:.1f})")
    if target is None:
        return ""
    return f"{', '.join(parts)} (target {target * 100:.1f})"


def summary(estimates: list[Estimate]) -> str:
    """``"3 yes, 1 not separated"``: how many contrasts got each verdict, the commonest first;
    a lone contrast's verdict alone."""
    if len(estimates) == 1:
        return estimates[0].verdict
    counts: dict[str, int] = {}
    for item in estimates:
        counts[item.verdict] = counts.get(item.verdict, 0) + 1
    ordered = sorted(counts.items(), key=lambda pair: -pair[1])
    return ", ".join(f"{n} with an untrained cell" if verdict == "untrained cell"
                     else f"{n} {verdict}" for verdict, n in ordered)


def headline(estimates: list[Estimate]) -> Estimate:
    """The contrast a finding's summary row shows: the first measured on trained cells, else
    the first measured, else the first."""
    measured = [item for item in estimates if item.value is not None]
    trained = [item for item in measured if not item.untrained]
    return (trained or measured or estimates)[0]


def interval_text(item: Estimate) -> str:
    """``"+1.0 (-2.5 to +4.5)"`` in points, or ``"—"`` while unmeasured."""
    if item.value is None:
        return "—"
    return f"{item.value * 100:+.1f} ({item.low * 100:+.1f} to {item.high * 100:+.1f})"


def summary_row(finding: Finding, estimates: list[Estimate], page: str | None) -> list[str]:
    """One line of the summary table: the claim, its verdicts, one contrast with its interval,
    and the suite (linked to ``page`` where given)."""
    item = headline(estimates)
    shown = "—" if item.value is None else f"{item.contrast.label}: {interval_text(item)}"
    if item.value is not None and item.contrast.task != "sst2":
        shown = f"{item.contrast.task}: {shown}"
    suite = f"[{finding.suite}]({page})" if page else finding.suite
    return [finding.claim, summary(estimates), shown, suite]


def markdown(checked: list[tuple[Finding, list[Estimate]]], command: str,
             pages: dict[str, str] | None = None) -> str:
    """The findings page: the summary table (one line per finding), then a section per
    finding with every contrast. ``pages`` maps a suite to the link its rows get."""
    pages = pages or {}
    rows = [summary_row(finding, estimates, pages.get(finding.suite))
            for finding, estimates in checked]
    parts = [
        "# The paper's findings at CPU scale",
        "",
        f"Generated by `{command}` from the stores under this folder; regenerate it as they "
        "grow. Each finding is a set of contrasts between cells (chosen on validation) that "
        "the paper's claim says are positive, estimated on the cells' shared test examples: "
        f"the {CONFIDENCE:.0%} paired bootstrap interval (`zotune.bench.findings`, "
        "`zotune compare`), or, where a record predates per-example scores, the normal "
        "interval of independent binomials. Where a cell ran several seeds, the interval is "
        "widened by their spread (the optimizer's run-to-run variation); a one-seed cell's "
        "is not, so its run-to-run spread, ±0.3 to ±4.6 points on the demo recipe "
        "(cpu-settings), is not in it. **yes**: the interval lies above 0; "
        "**reversed**: below it; **not separated**: it straddles 0; **queued**: a cell has "
        f"no finished run yet; **untrained cell**: a cell was {UNTRAINED_MEANING}, and the "
        "contrast says nothing about its optimizer. "
        "Values are points of test accuracy; the paper's are from "
        "ZO-Bench's SST-2 / OPT-1.3B table, where it has every cell. A claim of faster "
        "convergence also gives each cell's forward passes to ZO-SGD's best validation "
        "accuracy (where its runs end: they keep their best checkpoint), of the passes it "
        "ran (the seed-mean validation curve of its chosen setting; `zotune report`'s "
        "time-to-accuracy table, which adds wall time): "
        "a description of the runs, with no interval.",
        "",
        markdown_table(["finding", "verdicts of its contrasts",
                        "one contrast (points, 95% interval)", "suite"], rows, right_from=None),
        "",
    ]
    for finding, estimates in checked:
        parts += [f"## {finding.claim}", ""]
        if finding.detail:
            parts += [finding.detail, ""]
        if finding.margin:
            parts += [f"Holds when the interval lies above −{finding.margin * 100:.0f} points.",
                      ""]
        header = ["contrast", "measured (95% interval)", "paper", "method", "verdict"]
        if finding.time_to_accuracy:
            header.append("forward passes to ZO-SGD's best validation")
        table = []
        for item in estimates:
            paper = paper_value(item.contrast)
            measured = interval_text(item)
            verdict = item.verdict
            if item.missing:
                verdict += f" (waiting for {', '.join(item.missing)})"
            if item.untrained:
                verdict += f" ({', '.join(item.untrained)})"
            if item.partial:
                verdict += f"; so far: {', '.join(item.partial)} still running"
            row = [
                f"{item.contrast.task}: {item.contrast.label}",
                measured,
                "—" if paper is None else f"{paper:+.1f}",
                item.method or "—",
                verdict,
            ]
            if finding.time_to_accuracy:
                row.append(item.reaches or "—")
            table.append(row)
        parts += [markdown_table(header, table, right_from=None), ""]
    return "\n".join(parts)


def suite_pages(root: Path, page_folder: Path) -> dict[str, str]:
    """Each suite's page (its README, else its report), relative to ``page_folder``."""
    pages = {}
    for suite in {finding.suite for finding in FINDINGS}:
        for page in (root / suite / "README.md", root / suite / "report" / "report.md"):
            if page.is_file():
                pages[suite] = Path(os.path.relpath(page, page_folder)).as_posix()
                break
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zotune.bench.findings",
        description="Check the paper's findings against the stores under ROOT "
        "(ROOT/<suite>/ for each suite a finding names).",
    )
    parser.add_argument("root", help="the folder holding one results store per suite")
    parser.add_argument("--out", help="write the Markdown here (default: print it)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        print(f"zotune: error: {root} is not a folder", file=sys.stderr)
        return 2
    command = "python -m zotune.bench.findings " + " ".join(argv or sys.argv[1:])
    try:
        text = markdown(check(root), command,
                        suite_pages(root, Path(args.out).parent if args.out else root))
        if args.out:
            atomic_write_text(Path(args.out), text)
    except (ValueError, OSError) as error:
        print(f"zotune: error: {error}", file=sys.stderr)
        return 2
    print(args.out if args.out else text, end="\n" if args.out else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
