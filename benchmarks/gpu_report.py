"""The helper steps of ``benchmarks/gpu.sh``: check the environment, merge part 1's
per-scheme profiles, and write the run's README.md.

    python benchmarks/gpu_report.py environment --repo REPO --out FILE [--require-cuda]
    python benchmarks/gpu_report.py merge-profile --out FILE PROFILE.json...
    python benchmarks/gpu_report.py readme --out OUT --status TSV --work DIR --mode gpu|tiny

Only ``environment`` imports torch (and zotune, to check that this checkout's copy imports
with the installed versions); the others read JSON, so they cost nothing when time is short.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

# What zotune profile needs, and what it can do without (datasets: task data; gguf: the
# embedded model), reported so a machine's missing package is seen before a part fails on it.
PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "pyyaml",
    "numpy", "tqdm", "datasets", "gguf",
)
# The modules the four parts import; part 4 alone needs accelerate, so without it the others
# still run.
MODULES = (
    "zotune.cli", "zotune.profiling.command", "zotune.profiling.measurement",
    "zotune.profiling.step_cost", "zotune.models.offload",
)
PART4_MODULE = "accelerate"
MIB_PER_GIB = 1024
MEZO_OPT13B_GB = 26  # MeZO (Malladi et al., 2023): ZO-SGD on OPT-13B, MultiRC, one A100
STEP_RATIO_TARGET = 1.05  # issue 16: a ZO-SGD step ≤ 1.05 × two forward passes
MEZO_SPEEDUP_TARGET = 2.0  # issue 16: ≥ 2× faster than the MeZO-style step
PART_TITLES = {
    "1": "Part 1: memory and time per optimizer and scheme",
    "2": "Part 2: step cost",
    "3": "Part 3: OPT-13B memory",
    "4": "Part 4: OPT-13B with CPU-offloaded weights",
}


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit(repo: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else "unknown (not a git checkout)"


def environment(repo: Path, require_cuda: bool) -> tuple[dict[str, Any], list[str]]:
    """What this machine runs zotune with, and what stops the parts from running."""
    problems = []
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "zotune_commit": git_commit(repo),
    }
    import torch

    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = properties.name
        info["gpu_memory_mib"] = properties.total_memory // 2**20
        info["gpu_count"] = torch.cuda.device_count()
    elif require_cuda:
        problems.append("CUDA is not available to torch")
    import zotune

    info["zotune_file"] = zotune.__file__
    if not Path(zotune.__file__).resolve().is_relative_to((repo / "src").resolve()):
        problems.append(f"zotune imports from {zotune.__file__}, not from {repo / 'src'}")
    for module in MODULES:
        try:
            importlib.import_module(module)
        except Exception as error:  # report every import that fails, not only the first
            problems.append(f"import {module}: {type(error).__name__}: {error}")
    try:
        importlib.import_module(PART4_MODULE)
    except Exception as error:
        info["part4_cannot_run"] = f"import {PART4_MODULE}: {type(error).__name__}: {error}"
    from zotune.utils.environment import hardware_description

    info["hardware"] = hardware_description("cuda" if info["cuda_available"] else "cpu")
    return info, problems


def merge_profiles(paths: list[Path]) -> dict[str, Any]:
    """One ``zotune profile --json`` payload of several: their rows in order, their commands
    joined with ``&&``; the setup line of the first (the parts share it)."""
    payloads = [json.loads(path.read_text()) for path in paths]
    merged: dict[str, Any] = {"kind": "profile", "setup": payloads[0]["setup"]}
    merged["command"] = " && ".join(p["command"] for p in payloads if p.get("command"))
    notes = list(dict.fromkeys(p["note"] for p in payloads if p.get("note")))
    if notes:
        merged["note"] = "; ".join(notes)
    merged["results"] = [row for p in payloads for row in p["results"]]
    failed = [row for p in payloads for row in p.get("failed", [])]
    if failed:
        merged["failed"] = failed
    return merged


def read_status(path: Path) -> list[dict[str, str]]:
    keys = ("part", "name", "status", "seconds", "limit", "command")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [dict(zip(keys, line.split("\t", 5), strict=True)) for line in lines]


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f}" if value >= 100 * 2**20 else f"{value / 2**20:.1f}"


def label(row: dict[str, Any]) -> str:
    """A profile row's method as the tables print it (``zo-sgd [cpu-offload]``)."""
    return row["spec"]["method"] + (" [cpu-offload]" if row["spec"].get("offload") else "")


def profile_grid(payload: dict[str, Any]) -> list[str]:
    """The paper's layout: one row per method, one column per scheme, 'MiB / s per step'
    ("failed" where the measurement failed)."""
    rows = payload["results"] + payload.get("failed", [])
    schemes = list(dict.fromkeys(r["spec"]["scheme"] for r in rows))
    methods = list(dict.fromkeys(r["spec"]["method"] for r in rows))
    cells = {(r["spec"]["method"], r["spec"]["scheme"]): r for r in rows}
    lines = [
        "| method | " + " | ".join(schemes) + " |",
        "| --- |" + " --- |" * len(schemes),
    ]
    for method in methods:
        values = []
        for scheme in schemes:
            row = cells.get((method, scheme))
            if row is None or "error" in row:
                values.append("–" if row is None else "failed")
            else:
                values.append(f"{mib(row['memory_bytes'])} MiB / {row['seconds_per_step']:.3f} s")
        lines.append(f"| {method} | " + " | ".join(values) + " |")
    return lines


def step_cost_lines(payload: dict[str, Any]) -> list[str]:
    rows = {(r["method"], r["scheme"]): r for r in payload["rows"]}
    zo = rows.get(("zo-sgd", "full"))
    if zo is None:
        return ["No ZO-SGD full row in part 2's results."]
    speedup = zo["speedup_vs_mezo"]
    ratio_met = "met" if zo["ratio"] <= STEP_RATIO_TARGET else "missed"
    lines = [
        f"- ZO-SGD (full): T_step {zo['seconds_per_step']:.4f} s, two forwards "
        f"{2 * zo['forward_seconds']:.4f} s: T_step/(2·T_fwd) = {zo['ratio']:.3f} "
        f"(target ≤ {STEP_RATIO_TARGET}: {ratio_met})",
    ]
    if speedup is not None:
        speed_met = "met" if speedup >= MEZO_SPEEDUP_TARGET else "missed"
        lines.append(
            f"- against the MeZO-style step ({zo['mezo_seconds']:.4f} s): {speedup:.2f}× faster "
            f"(target ≥ {MEZO_SPEEDUP_TARGET:g}×: {speed_met})"
        )
    return lines


def memory_lines(payload: dict[str, Any]) -> list[str]:
    lines = []
    for row in payload["results"]:
        gib = row["memory_bytes"] / 2**20 / MIB_PER_GIB
        lines.append(
            f"- {label(row)}: {gib:.2f} GiB (weights {mib(row['weights_bytes'])} MiB + "
            f"{mib(row['above_weights_bytes'])} MiB above them), {row['seconds_per_step']:.3f} "
            "s/step"
        )
    lines.append(f"- MeZO reports {MEZO_OPT13B_GB} GB for ZO-SGD on OPT-13B on one A100.")
    return lines


def offload_lines(payload: dict[str, Any]) -> list[str]:
    rows = {label(r): r for r in payload["results"]}
    resident, offloaded = rows.get("zo-sgd"), rows.get("zo-sgd [cpu-offload]")
    if resident is None or offloaded is None:
        return ["Part 4's results lack the resident or the offloaded ZO-SGD row."]
    slower = offloaded["seconds_per_step"] / resident["seconds_per_step"]
    return [
        f"- ZO-SGD resident: {resident['seconds_per_step']:.3f} s/step, "
        f"{mib(resident['memory_bytes'])} MiB on the device",
        f"- ZO-SGD offloaded: {offloaded['seconds_per_step']:.3f} s/step ({slower:.1f}× "
        f"resident), {mib(offloaded['above_weights_bytes'])} MiB on the device at its peak "
        "(the weights in CPU memory)",
    ]


HEADLINES = {
    "1": ("part1-profile.json", profile_grid),
    "2": ("part2-step-cost.json", step_cost_lines),
    "3": ("part3-memory.json", memory_lines),
    "4": ("part4-offload.json", offload_lines),
}
PAGES = {"1": "profile-*.md", "2": "part2.md", "3": "part3.md", "4": "part4.md"}


def demote(page: str) -> str:
    """A part's Markdown page under its part heading: each heading one level down."""
    return "\n".join(f"#{line}" if line.startswith("#") else line for line in page.splitlines())


def readme(out: Path, status: list[dict[str, str]], work: Path, mode: str) -> str:
    env = load(out / "environment.json") or {}
    where = env.get("hardware", "unknown machine (the environment check did not finish)")
    versions = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
    title = "GPU figures" if mode == "gpu" else "GPU script, tiny CPU rehearsal (not GPU figures)"
    lines = [
        f"# {title}",
        "",
        f"Machine: {where}. Python {env.get('python', '?')}; {versions}.",
        f"zotune commit: {env.get('zotune_commit', 'unknown')}. "
        "Made by `bash benchmarks/gpu.sh" + (" --tiny" if mode == "tiny" else "") + " OUT`.",
        "",
        "| part | what | status | seconds | limit s |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {s['part']} | {s['name']} | {s['status']} | {s['seconds']} | {s['limit']} |"
        for s in status
    ]
    for part, title in PART_TITLES.items():
        file, headline = HEADLINES[part]
        lines += ["", f"## {title}", ""]
        payload = load(out / file)
        lines += headline(payload) if payload else [f"No results (`{file}` was not written)."]
        failed = (payload or {}).get("failed", [])
        lines += [f"- failed: {f['label']}: {f['error']}" for f in failed]
        for page in sorted(work.glob(PAGES[part])):
            lines += ["", demote(page.read_text().strip())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_report.py")
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("environment")
    env.add_argument("--repo", type=Path, required=True)
    env.add_argument("--out", type=Path, required=True)
    env.add_argument("--require-cuda", action="store_true")
    merge = commands.add_parser("merge-profile")
    merge.add_argument("--out", type=Path, required=True)
    merge.add_argument("profiles", type=Path, nargs="+")
    page = commands.add_parser("readme")
    page.add_argument("--out", type=Path, required=True)
    page.add_argument("--status", type=Path, required=True)
    page.add_argument("--work", type=Path, required=True)
    page.add_argument("--mode", choices=("gpu", "tiny"), required=True)
    args = parser.parse_args(argv)
    if args.command == "environment":
        info, problems = environment(args.repo, args.require_cuda)
        info["problems"] = problems
        args.out.write_text(json.dumps(info, indent=2) + "\n")
        print(json.dumps(info, indent=2))
        for problem in problems:
            print(f"gpu_report: {problem}", file=sys.stderr)
        return 2 if problems else 0  # 1 is a part with some measurements failed
    if args.command == "merge-profile":
        args.out.write_text(json.dumps(merge_profiles(args.profiles), indent=2) + "\n")
        print(f"gpu_report: merged {len(args.profiles)} profiles into {args.out}")
        return 0
    text = readme(args.out, read_status(args.status), args.work, args.mode)
    (args.out / "README.md").write_text(text)
    print(f"gpu_report: wrote {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
