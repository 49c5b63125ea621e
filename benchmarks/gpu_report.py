"""gpu_check.sh's helper: check the carried data, describe the machine, fold every step's results into one JSON.

    python3 benchmarks/gpu_report.py data ROOT --out FILE          the four MNIST files under ROOT/MNIST/raw, verified
    python3 benchmarks/gpu_report.py [--smoke] probe --device cuda --out FILE    the machine, torch, the code version
    python3 benchmarks/gpu_report.py [--smoke] build WORK --out JSON [--log LOG]  the report of the steps run so far

`data` never downloads: a file that is missing (and not carried as NAME.gz beside it) or fails its MD5 is reported
in one line, exit status 3. `probe` exits with status 4 when the device asked for is not there. `build` reads
WORK/steps.tsv (one line per step, written by gpu_check.sh: part, name, kind, output, time limit, start, end, exit
status, command), each step's log and results file, and writes JSON: the device, torch and code version at the
top and again on every step, each step's exit status and wall time, and its figures. Like every benchmark it
refuses smoke mode, unless `--smoke` says the report is of a smoke check (`gpu_check.sh --cpu-smoke`); the JSON
then says `"smoke": true`, and may not go to mnist_lesson/evidence/.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from common import refuse_smoke_mode, where

from mnist_lesson.data import FILES, is_valid, raw_folder
from mnist_lesson.records import claim_holds, read_json, summarize_seeds, summarize_speed, write_json
from mnist_lesson.train import History

REPO = Path(__file__).resolve().parents[1]
DATA_MISSING, NO_DEVICE = 3, 4  # exit statuses of `data` and `probe`
LOG_TAIL = 3000  # characters of each step's log kept in the JSON
LOG_KEEP = 200_000  # characters of each step's log kept in the combined log
STEP_FIELDS = ("part", "name", "kind", "output", "limit", "start", "end", "status", "command")


# --- data: the carried files, verified, never fetched -------------------------------------------------------


def check_data(root: Path) -> dict[str, Any]:
    """Return what is under ROOT/MNIST/raw: each of the four files verified, missing or failing its MD5.

    A file carried compressed (NAME.gz beside where NAME belongs, e.g. 11 MB instead of 55) is unpacked first."""
    raw = raw_folder(root)
    files: dict[str, str] = {}
    unpacked = []
    for name in FILES:
        path, packed = raw / name, raw / f"{name}.gz"
        if not path.exists() and packed.is_file():
            part = path.with_name(f".{name}.unpacking")
            with gzip.open(packed) as source, open(part, "wb") as target:
                shutil.copyfileobj(source, target)
            os.replace(part, path)
            unpacked.append(name)
        files[name] = "verified" if is_valid(path) else "failed its MD5 check" if path.exists() else "missing"
    return {"root": str(root), "raw": str(raw), "files": files, "unpacked": unpacked,
            "ok": all(state == "verified" for state in files.values())}


def data_problem(report: dict[str, Any]) -> str:
    """Return the one line that says which files are not there and how to carry them."""
    wrong = ", ".join(f"{name} ({state})" for name, state in report["files"].items() if state != "verified")
    return (f"gpu_check: MNIST files not usable in {report['raw']}: {wrong}. Carry the four raw files there (see "
            "benchmarks/gpu_check.sh's header: `carry: [\"data\"]`); nothing was run and nothing was downloaded")


# --- probe: the machine, torch and the code that runs -----------------------------------------------------


def version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> str | None:
    """Return nvidia-smi's line for each GPU (name, driver, memory, clocks), or None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit"
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed: {exc}"
    return (done.stdout or done.stderr).strip()


def probe(device_name: str) -> dict[str, Any]:
    """Describe the machine, the device asked for, torch and the code version; `ok` says whether the device is there."""
    import torch

    import mnist_lesson
    from mnist_lesson.device import native_bf16
    from mnist_lesson.files import code_version

    package = Path(mnist_lesson.__file__).resolve().parent
    info: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "torchvision": version_of("torchvision"),
        "triton": version_of("triton"), "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "c_compiler": shutil.which("cc") or shutil.which("gcc"), "cuda_available": torch.cuda.is_available(),
        "code": code_version(), "package": str(package), "from_checkout": package == REPO / "mnist_lesson",
        "nvidia_smi": nvidia_smi(), "device_asked": device_name}
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        return {**info, "ok": False, "problem": f"gpu_check: no CUDA GPU visible to torch {torch.__version__} "
                f"(torch.version.cuda {torch.version.cuda}); nothing was run. On a machine without one, "
                "`benchmarks/gpu_check.sh --cpu-smoke` checks the script itself"}
    device = torch.device(device_name)
    info.update(device=where(device), native_bf16=native_bf16(device))
    start = time.perf_counter()
    (torch.ones(8, device=device) * 2).sum().item()  # the device works, and its libraries are read from disk once
    info["first_op_s"] = round(time.perf_counter() - start, 2)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1),
                       "multiprocessors": props.multi_processor_count}
    # A fresh machine builds matplotlib's font cache on its first figure: here, not inside the first timed command.
    start = time.perf_counter()
    from matplotlib.figure import Figure

    figure = Figure()
    figure.text(0.5, 0.5, "warm-up")
    figure.savefig(os.devnull, format="png")
    info["matplotlib_warmup_s"] = round(time.perf_counter() - start, 2)
    ok = info["from_checkout"]
    problem = None if ok else (f"gpu_check: mnist_lesson was imported from {package}, not from the checkout {REPO}; "
                               "nothing was run")
    return {**info, "ok": ok, "problem": problem}


# --- build: every step's figures in one JSON ------------------------------------------------------------


def read_steps(work: Path) -> list[dict[str, str]]:
    """Return the steps gpu_check.sh recorded in WORK/steps.tsv, in the order they ran."""
    path = work / "steps.tsv"
    if not path.exists():
        return []
    return [dict(zip(STEP_FIELDS, line.split("\t", len(STEP_FIELDS) - 1), strict=True))
            for line in path.read_text().splitlines() if line.strip()]


def read_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def lines_with(text: str, *starts: str) -> list[str]:
    """Return the log's lines (progress-bar redraws split off) that begin with one of `starts`."""
    lines = (part.strip() for line in text.splitlines() for part in line.split("\r"))
    return [line for line in lines if line.startswith(starts)]


def train_figures(output: Path, log: str) -> dict[str, Any]:
    """`python3 -m mnist_lesson train`: the run's history (epoch times, accuracies, device, torch, code)."""
    histories = sorted(output.glob("*/history.json"))
    figures: dict[str, Any] = {"printed": lines_with(log, "training on", "wall time", "verdict:")}
    if not histories:
        return figures
    history = History.load(histories[-1])
    meta, test_acc = history.meta, history.column("test_acc")
    figures.update({key: meta.get(key) for key in ("device", "torch", "code", "speed", "smoke", "stopped", "seed")})
    figures.update(run_s=meta.get("run_seconds"), epoch_s=history.column("seconds"), test_acc=test_acc,
                   train_acc=history.column("train_acc"),
                   claim_holds=None if meta.get("smoke") else claim_holds(test_acc))
    return figures


def speed_figures(output: Path, log: str) -> dict[str, Any]:
    """benchmarks/speed.py: its results file, and each configuration's medians."""
    if not output.is_file():
        return {"printed": lines_with(log, "device:", "[")}
    data = read_json(output)
    rows = [{"config": row.config, "runs": row.runs, "run_s": row.wall, "steady_epoch_s": row.epoch,
             "vs_baseline": row.vs_baseline, "test_acc": list(row.test_accs)} for row in summarize_speed(data).rows]
    return {"device": data["device"], "rows": rows, "results": data}


def seeds_figures(output: Path, log: str) -> dict[str, Any]:
    """benchmarks/seeds.py: every finished seed (kept when the step was stopped), and the summary."""
    if not output.is_file():
        return {"printed": lines_with(log, "seed ", "results in")}
    data = read_json(output)
    runs = [{**run, "claim_holds": None if data.get("smoke") else claim_holds(run["test_acc"])} for run in data["runs"]]
    summary = summarize_seeds(output).lines() if runs else []
    return {"model": data["model"], "params": data["params"], "torch": data.get("torch"), "smoke": data.get("smoke"),
            "recipe": data["recipe"], "seeds_done": [run["seed"] for run in runs], "summary": summary, "runs": runs}


def notebooks_figures(output: Path, log: str) -> dict[str, Any]:
    """benchmarks/gpu_notebooks.py: each notebook that finished, whether every cell ran, and the device it printed."""
    if not output.is_file():
        return {"printed": lines_with(log, "notebook ", "running ")}
    data = read_json(output)
    return {"torch": data["torch"], "smoke": data["smoke"], "runs": data["runs"],
            "failed": [run["notebook"] for run in data["runs"] if not run["ok"]]}


FIGURES: dict[str, Callable[[Path, str], dict[str, Any]]] = {
    "train": train_figures, "speed": speed_figures, "seeds": seeds_figures, "notebooks": notebooks_figures}


def step_record(step: dict[str, str], work: Path, machine: dict[str, Any]) -> dict[str, Any]:
    """Return one step's entry: its command, exit status, state, wall time and figures."""
    log = read_text(work / "logs" / f"{step['name']}.log")
    ran = step["status"] != ""
    status = int(step["status"]) if ran else None
    limit = int(step["limit"]) if step["limit"] else None
    seconds = float(step["end"]) - float(step["start"]) if ran else None
    timed_out = ran and status in (124, 137) and limit is not None and seconds >= limit - 1
    state = ("skipped: the part's time was spent" if not ran else "timed out" if timed_out else
             "ok" if status == 0 else "failed")
    record: dict[str, Any] = {
        "part": step["part"], "name": step["name"], "command": step["command"], "status": status, "state": state,
        "seconds": None if seconds is None else round(seconds, 2), "limit_s": limit,
        **{key: machine.get(key) for key in ("device", "torch", "code")}}
    if ran:
        try:
            record["figures"] = FIGURES[step["kind"]](Path(step["output"]), log)
        except Exception as exc:  # a half-written or unexpected file must not lose the other steps' figures
            record["figures"], record["figures_error"] = None, f"{type(exc).__name__}: {exc}"
        record["log_tail"] = log[-LOG_TAIL:]
    return record


def build(work: Path, parts: list[str], smoke: bool) -> dict[str, Any]:
    """Return the report of everything under WORK: the data, the machine, every step."""
    data, machine = read_json(work / "data.json"), read_json(work / "probe.json", {})
    steps = [step_record(step, work, machine) for step in read_steps(work)]
    ready = bool(data and data["ok"] and machine.get("ok"))
    return {
        "check": "benchmarks/gpu_check.sh", "smoke": smoke, "parts": parts, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": machine.get("device"), "torch": machine.get("torch"), "code": machine.get("code"),
        "ok": ready and bool(steps) and all(step["status"] == 0 for step in steps),
        "data": data, "machine": machine, "steps": steps}


def combined_log(work: Path) -> str:
    """Return every step's log (each cut to its last LOG_KEEP characters) under a header line of its own."""
    out = []
    for step in read_steps(work):
        text = read_text(work / "logs" / f"{step['name']}.log")
        cut = f"[... {len(text) - LOG_KEEP} characters left out ...]\n" if len(text) > LOG_KEEP else ""
        out.append(f"===== {step['part']}/{step['name']}: exit {step['status'] or 'not run'}: {step['command']}\n"
                   f"{cut}{text[-LOG_KEEP:]}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the steps were smoke runs (gpu_check.sh --cpu-smoke)")
    commands = parser.add_subparsers(dest="command")
    data = commands.add_parser("data", help="verify the four MNIST files under ROOT/MNIST/raw; never downloads")
    data.add_argument("root", type=Path)
    data.add_argument("--out", type=Path, required=True)
    machine = commands.add_parser("probe", help="describe the machine, the device, torch and the code version")
    machine.add_argument("--device", default="cuda")
    machine.add_argument("--out", type=Path, required=True)
    report = commands.add_parser("build", help="fold the steps under WORK into one JSON")
    report.add_argument("work", type=Path)
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--log", type=Path, help="also write every step's log into this one file")
    report.add_argument("--parts", nargs="*", default=[])
    args = parser.parse_args(argv)
    if args.command == "data":  # runs nothing and records nothing: smoke mode does not matter
        found = check_data(args.root)
        write_json(args.out, found)
        if not found["ok"]:
            print(data_problem(found), file=sys.stderr)
            return DATA_MISSING
        print(f"gpu_check: the four MNIST files verified in {found['raw']}"
              + (f" ({', '.join(found['unpacked'])} unpacked)" if found["unpacked"] else ""))
        return 0
    # Smoke mode is refused, unless --smoke says this is a smoke check, whose files then stay outside evidence/.
    smoke = refuse_smoke_mode("a report of real runs would hold smoke runs' figures (pass --smoke for a smoke check)",
                              args.smoke, getattr(args, "out", None))
    if args.command is None:
        parser.error("say data, probe or build")
    if args.command == "probe":
        info = probe(args.device)
        write_json(args.out, info)
        if not info["ok"]:
            print(info["problem"], file=sys.stderr)
            return NO_DEVICE
        print(f"gpu_check: {info['device']}; code {info['code']}; python {info['python']}; "
              f"package from {info['package']}")
        return 0
    result = build(args.work, args.parts, smoke)
    write_json(args.out, result)
    if args.log is not None:
        args.log.write_text(combined_log(args.work))
    print(f"gpu_check: {len(result['steps'])} step(s), "
          f"{sum(step['status'] == 0 for step in result['steps'])} ok, written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
