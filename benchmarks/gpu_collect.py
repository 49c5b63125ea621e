"""Fold what a GPU lease brought back into the evidence: every finished seed of a model into seeds_MODEL_cuda.json.

    python benchmarks/gpu_collect.py FOLDER [--model final] [--out FILE]
    python benchmarks/gpu_collect.py --timed RUNS OUTPUT --out FILE

The second form folds timed `train` commands (each run folder's history.json under RUNS, and OUTPUT, the device
tool's printed output with a line "== train final FLAGS: command SECONDS s" per command, as
benchmarks/gpu_results/2026-12-04-h200-graph/probe_command.sh prints it) into one evidence file of timed runs.

FOLDER holds what gpu_session.sh (gpu_check.json files such as final_s3.json, unpacked from results.tar.gz) and
direct seeds.py calls (seeds files, or their logs when the files did not come back) returned, copied as they came;
the recipe and parameter count come from a seeds file or from a gpu_check.json's seeds step. A seed found both
ways is taken from its JSON. A run rebuilt from a log (the epoch lines `seeds.py` prints) says so ("from": "log");
its test accuracies are the printed two-decimal figures, the same as the JSON's. The output is a seeds file in
benchmarks/seeds.py's format, so the README's tables and `records.summarize_seeds` read it like any other.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from common import refuse_smoke_mode

from mnist_lesson.records import read_json, seeds_path, summarize_seeds, write_json

EPOCH = re.compile(r"^epoch\s+(\d+)/(\d+): train loss ([\d.]+) acc ([\d.]+)% \| test loss ([\d.]+) acc ([\d.]+)% "
                   r"\| lr \S+ \| ([\d.]+) s$")


def runs_in_check(path: Path, model: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Return the seeds file's header (model, params, recipe, torch) and the finished seeds of `model` in one
    gpu_check.json (its seeds steps' figures), or (None, []) when it ran none."""
    report = read_json(path)
    header, runs = None, []
    for step in report.get("steps", []):
        figures = step.get("figures") or {}
        if figures.get("model") == model:
            if header is None and all(key in figures for key in ("params", "recipe", "torch")):
                header = {key: figures[key] for key in ("model", "params", "recipe", "torch")}
            if figures.get("smoke"):
                header = {**(header or {}), "smoke": True}
            runs += [{key: value for key, value in run.items() if key != "claim_holds"} for run in figures["runs"]]
    return header, runs


def run_from_log(path: Path, seed: int, device: str, code: str) -> dict[str, Any] | None:
    """Return the run a seeds.py log printed, epoch by epoch, or None when it did not finish every epoch."""
    epochs = [match.groups() for line in path.read_text(errors="replace").split("\n")
              if (match := EPOCH.match(line.strip().split("\r")[-1].strip()))]
    if not epochs or int(epochs[-1][0]) != int(epochs[-1][1]) or len(epochs) != int(epochs[-1][1]):
        return None
    return {"seed": seed, "device": device, "seconds": sum(float(e[6]) for e in epochs), "from": "log", "code": code,
            "test_acc": [float(e[5]) for e in epochs], "train_acc": [float(e[3]) for e in epochs],
            "test_loss": [float(e[4]) for e in epochs]}


COMMAND = re.compile(r"^== train (\S+) (.*): command ([\d.]+) s$")


def timed_runs(runs: Path, output: Path) -> list[dict[str, Any]]:
    """Return each timed `train` command: its flags, the whole command's seconds, and its run's history figures."""
    commands = {}
    for line in output.read_text().splitlines():
        if match := COMMAND.match(line.strip()):
            model, flags, seconds = match.groups()
            words = flags.split()
            seed = int(words[words.index("--seed") + 1]) if "--seed" in words else 0
            commands[(model, seed, "--graph" in words, "--no-autotune" not in words)] = (flags, float(seconds))
    timed = []
    for path in sorted(runs.glob("*/history.json")):
        history = read_json(path)
        meta = history["meta"]
        key = (meta["model"], meta["seed"], meta["speed"].get("graph", False), meta["speed"].get("autotune", True))
        if key not in commands:
            raise SystemExit(f"gpu_collect: no command line in {output} for the run in {path.parent.name} {key}")
        flags, seconds = commands[key]
        timed.append({"model": meta["model"], "seed": meta["seed"], "flags": flags, "command_s": seconds,
                      "run_s": meta["run_seconds"], "device": meta["device"], "torch": meta["torch"],
                      "code": meta["code"], "date": meta["date"], "speed": meta["speed"],
                      "epoch_s": [epoch["seconds"] for epoch in history["epochs"]],
                      "test_acc": [epoch["test_acc"] for epoch in history["epochs"]]})
    if len(timed) != len(commands):
        raise SystemExit(f"gpu_collect: {len(commands)} commands in {output}, {len(timed)} run folders in {runs}")
    return timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?")
    parser.add_argument("--timed", type=Path, nargs=2, metavar=("RUNS", "OUTPUT"))
    parser.add_argument("--model", default="final")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    refuse_smoke_mode("it records runs, and smoke runs are never recorded")
    if args.timed:
        if args.out is None:
            parser.error("--timed needs --out FILE")
        timed = timed_runs(*args.timed)
        write_json(args.out, {"runs": timed})
        for run in timed:
            print(f"train {run['model']} {run['flags']}: command {run['command_s']:.1f} s, run {run['run_s']:.1f} s")
        return 0
    if args.folder is None:
        parser.error("name a FOLDER, or --timed RUNS OUTPUT")
    out = args.out or seeds_path(f"{args.model}_cuda")
    found: dict[int, dict[str, Any]] = {}
    header: dict[str, Any] | None = None
    for path in sorted(args.folder.glob("*.json")):
        data = read_json(path)
        if "steps" in data:  # a gpu_check.json
            from_check, runs = runs_in_check(path, args.model)
            header = header or from_check
            for run in runs:
                found.setdefault(run["seed"], run)
        elif data.get("model") == args.model:  # a seeds file
            header = header or {key: value for key, value in data.items() if key != "runs"}
            for run in data["runs"]:
                found.setdefault(run["seed"], run)
    if header is None:
        raise SystemExit(f"gpu_collect: no run of {args.model} in {args.folder} (no seeds file or gpu_check.json with "
                         "its seeds) to take the recipe from")
    if any(run.get("smoke") for run in found.values()) or header.get("smoke"):
        raise SystemExit("gpu_collect: smoke runs are never recorded")
    device = next(iter(found.values()))["device"]
    code = next(iter(found.values())).get("code", "unknown")
    for log in sorted(args.folder.glob(f"{args.model}_s*.log")):
        seed = int(log.stem.split("_s")[-1])
        if seed not in found and (run := run_from_log(log, seed, device, code)) is not None:
            found[seed] = run
    write_json(out, {**header, "runs": [found[seed] for seed in sorted(found)]})
    print(f"{len(found)} seed(s) of {args.model} in {out}")
    print("\n".join(summarize_seeds(out).lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
