#!/usr/bin/env bash
# What needs a CUDA GPU, in parts of at most ~8 minutes each, for a machine that has one and no network (the
# device tool's H200, or a Colab GPU). It ran on an H200 on 2026-12-04 (docs/performance.md has what it measured).
#
#   benchmarks/gpu_check.sh PART... [--data ROOT] [--out DIR] [--seeds "0 1 ..."] [--part-seconds N] [--models "..."]
#   benchmarks/gpu_check.sh --cpu-smoke [PART...]
#
# Parts (run each in its own call: the device tool allows 10 minutes a command, 15 minutes a session):
#   speed        `python3 -m mnist_lesson train final` as a student runs it, --graph, plain, --amp, --compile and both, each
#                timed as the whole command (interpreter start, imports and data included: what the 15-second target
#                is about); then benchmarks/speed.py --mode levers --epochs 2 --repeats 1 (the assignment's
#                DataLoader against every lever, side by side in one process, as the CPU table in docs/performance.md)
#   seeds-final  benchmarks/seeds.py --model final, seeds 0-9
#   seeds-rungs  benchmarks/seeds.py for under8k, under5k and under3762 (or --models), seeds 0 1 of each
#   notebooks    notebooks 02-08 top to bottom in smoke mode, then 02 in full (benchmarks/gpu_notebooks.py, each on a
#                copy in a fresh kernel), to prove that no cell of a lesson breaks on a GPU; the executed copies come
#                back as notebooks_executed.tar.gz. Needs nbclient, ipykernel and torchinfo, which the device machine
#                lacks: carry them as wheels (the device tool's README), install them with --target and put that
#                folder on PYTHONPATH before calling this script
#   all          the four, one after the other (more than one call's 10 minutes on a GPU)
# --cpu-smoke runs every step of the parts named (default: all but notebooks; its smoke check runs 02 alone) on the
# CPU in smoke mode (MNIST_LESSON_SMOKE=1, 20 batches a run, seeds 0 1 of final and 0 of each rung, `--device cpu`,
# one thread a benchmark): about 2 minutes on a quiet 2-core EPYC (3-4 under load), into a temporary folder unless OUT or --out names one;
# tests/test_gpu_check.py runs it so that this script cannot rot unseen. The benchmarks refuse smoke mode except
# through their --smoke-check, which this passes: results go to files of this check only (never
# mnist_lesson/evidence/), each marked "smoke": true, and so is the JSON.
#
# How long things take: measured on the H200 on 2026-12-04 (torch 2.11), the step looks host-bound (not profiled),
# about 5 ms a step of `final` (evaluation included), a little more with 7 others beside it (one process per CPU
# core): `train final` took 93 s for 15 epochs (the first
# epoch about 23 s), a seed of `final` 82-106 s, a seed of `under5k` or `under8k` (batch 32, twice the steps) about
# 180 s; the header's earlier estimate of 22-30 s a seed was 3-4 times too optimistic. So: the speed part
# needs about 7-8 minutes alone (plain ~105 s, --amp at least 65 s, two cold compiles on top: estimates, none of the
# three finished); seeds fit only side by side, one process per seed (benchmarks/gpu_session.sh does that; 8 at once
# took 100-106 s a seed of `final`, 17 at once has not been tried). Every step
# runs under `timeout`: a part stops at --part-seconds (default 480), each seeds step of the rungs gets an even share
# of what is left, and seeds.py writes after each seed, so a stopped seeds step keeps the seeds it finished. --seeds
# changes the seeds of the seeds parts.
#
# The data: only from a carried folder, never downloaded (a missing file is one line and exit status 3, before any
# run). The data root is --data, else $MNIST_LESSON_DATA, else the repository's data/ (ignored by git); it must hold
# the four uncompressed original files, 52.4 MiB (about 55 MB) together, under ROOT/MNIST/raw/:
#   train-images-idx3-ubyte (47,040,016 bytes)   train-labels-idx1-ubyte (60,008)
#   t10k-images-idx3-ubyte  (7,840,016)          t10k-labels-idx1-ubyte  (10,008)
# each checked against its MD5 (mnist_lesson/data.py) before anything runs, so ensure_mnist finds them verified and
# never reaches for the network. Here, once, in the repository root:
#   raw=$(python3 -m mnist_lesson data | sed -n 's/^MNIST files verified in //p')
#   mkdir -p data/MNIST/raw && cp "$raw"/*-ubyte data/MNIST/raw/
# then call the device tool with carry ["data"] and, e.g., command `benchmarks/gpu_check.sh speed`, timeout_s 600.
# The working tree travels too (about 5 MB; 64 MiB in all). To carry less, compress them in place
# (`gzip data/MNIST/raw/*-ubyte`: NAME.gz, about 11 MB together) and carry that: they are unpacked there first.
#
# What comes back: $OUT/gpu_check.json (one JSON: the device, torch and code version at the top and on every step,
# each step's command, exit status, state, wall time, figures and the tail of its log; `ok` when every step exited
# 0) and $OUT/gpu_check.log (every step's log). Every step runs even if another fails; the script exits 0 when every
# step did, 1 when one failed, timed out or was skipped, 2 for bad arguments, 3 without the data, 4 without a CUDA
# GPU (3 and 4 before any run). Paths given relative are taken from where it is called. Nothing in the
# repository is changed; the runs' own files stay in a temporary folder (TMPDIR). The package is imported from
# this checkout (PYTHONPATH), with `python3` (the device machine has Python 3.12 with torch, torchvision,
# matplotlib and tqdm; nothing here needs torchinfo or nbclient).
set -uo pipefail # no -e: every step runs even if one fails, and each step's exit status is recorded

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { grep '^#   benchmarks/gpu_check.sh' "$repo/benchmarks/gpu_check.sh" | sed 's/^# *//'; }

smoke=0 data="" out="${OUT:-}" seeds="" part_seconds=480 parts=() models="under8k under5k under3762"
while [ $# -gt 0 ]; do
    case $1 in
    --cpu-smoke) smoke=1 ;;
    --data | --out | --seeds | --part-seconds | --models)
        [ $# -ge 2 ] || { echo "gpu_check: $1 needs a value" >&2; exit 2; }
        case $1 in
        --data) data=$2 ;;
        --out) out=$2 ;;
        --seeds) seeds=$2 ;;
        --part-seconds) part_seconds=$2 ;;
        --models) models=$2 ;;
        esac
        shift ;;
    speed | seeds-final | seeds-rungs | notebooks) parts+=("$1") ;;
    all) parts+=(speed seeds-final seeds-rungs notebooks) ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ ${#parts[@]} -eq 0 ]; then
    if [ $smoke = 1 ]; then
        parts=(speed seeds-final seeds-rungs)
    else
        echo "gpu_check: name a part: speed, seeds-final, seeds-rungs, notebooks or all" >&2; usage >&2; exit 2
    fi
fi
case $part_seconds in '' | *[!0-9]*) echo "gpu_check: --part-seconds takes whole seconds" >&2; exit 2 ;; esac
case $seeds in *[!0-9\ ]*) echo "gpu_check: --seeds takes seed numbers, e.g. \"0 1 2\"" >&2; exit 2 ;; esac
case $models in "" | *[!a-z0-9\ ]*) echo "gpu_check: --models takes registered model names, e.g. \"under5k\"" >&2; exit 2 ;; esac

export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ $smoke = 1 ]; then
    export MNIST_LESSON_SMOKE=1
    device=cpu check=(--smoke-check --threads 1) smoke_flag=(--smoke)
    seeds_final=${seeds:-0 1} seeds_rungs=${seeds:-0} notebooks_smoke=02
    [ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_out.XXXXXX")
else
    if [ -n "${MNIST_LESSON_SMOKE:-}" ]; then
        echo "gpu_check: MNIST_LESSON_SMOKE is set: unset it for the real check, or pass --cpu-smoke" >&2; exit 2
    fi
    device=cuda check=() smoke_flag=()
    seeds_final=${seeds:-0 1 2 3 4 5 6 7 8 9} seeds_rungs=${seeds:-0 1} notebooks_smoke="02 03 04 05 06 07 08"
    if [ -z "$out" ]; then
        echo "gpu_check: set OUT (the device tool does) or pass --out DIR for gpu_check.json" >&2; exit 2
    fi
fi
root=${data:-${MNIST_LESSON_DATA:-$repo/data}}
case $root in /*) ;; *) root=$PWD/$root ;; esac
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
cd "$repo" || exit 2
export MNIST_LESSON_DATA="$root"
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_work.XXXXXX") || exit 2
mkdir -p "$work/logs"
: >"$work/steps.tsv"
has_timeout=0
command -v timeout >/dev/null && has_timeout=1
now() { date +%s.%N; }

report() { # fold everything recorded so far into $out/gpu_check.json and $out/gpu_check.log
    python3 benchmarks/gpu_report.py "${smoke_flag[@]}" build "$work" --out "$out/gpu_check.json" \
        --log "$out/gpu_check.log" --parts "${parts[@]}" || echo "gpu_check: the report could not be written" >&2
}
trap 'report; exit 130' INT TERM

echo "gpu_check: parts ${parts[*]}; device $device; data $root; results in $out; work files in $work"
python3 benchmarks/gpu_report.py data "$root" --out "$work/data.json"
status=$?
if [ $status -ne 0 ]; then report; exit 3; fi
python3 benchmarks/gpu_report.py "${smoke_flag[@]}" probe --device $device --out "$work/probe.json"
status=$?
if [ $status -ne 0 ]; then report; exit 4; fi

failed=0
shown='^(wall time|verdict|seed [0-9]+:|final|under|notebook |  \[|Traceback|[A-Za-z]*Error)' # log lines echoed after a step
# step PART NAME KIND OUTPUT LIMIT -- COMMAND...: run COMMAND for at most LIMIT seconds (skipped under 15), its
# output into the work folder's log; record part, name, kind, output, limit, start, end, exit status and command.
step() {
    local part=$1 name=$2 kind=$3 output=$4 limit=$5 start end status
    shift 6
    local log="$work/logs/$name.log"
    if [ "$limit" -lt 15 ]; then
        printf '%s\t%s\t%s\t%s\t%s\t\t\t\t%s\n' "$part" "$name" "$kind" "$output" "$limit" "$*" >>"$work/steps.tsv"
        echo "[gpu_check] $part/$name: skipped, ${limit} s left of the part's ${part_seconds} s"
        failed=1
        return
    fi
    echo "[gpu_check] $part/$name: $* (at most ${limit} s)"
    start=$(now)
    if [ $has_timeout = 1 ]; then
        timeout --kill-after=20 "$limit" "$@" >"$log" 2>&1 # TERM: a background job may ignore INT
    else
        "$@" >"$log" 2>&1
    fi
    status=$?
    end=$(now)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$part" "$name" "$kind" "$output" "$limit" "$start" "$end" \
        "$status" "$*" >>"$work/steps.tsv"
    [ $status -eq 0 ] || failed=1
    tr '\r' '\n' <"$log" | grep -E "$shown" | tail -n 14
    echo "[gpu_check] $part/$name: exit $status after $(awk "BEGIN {printf \"%.1f\", $end - $start}") s"
}
# The seconds a step may take: what is left of the part, less 20 s for each step after it (`after N`), or an even
# share of what is left among it and the N-1 steps after it (`share N`), so that each seeds step gets its turn.
after() { echo $((deadline - SECONDS - 20 * $1)); }
share() { echo $(((deadline - SECONDS) / $1)); }

for part in "${parts[@]}"; do
    deadline=$((SECONDS + part_seconds))
    case $part in
    speed)
        left=5 # --graph first: the figure the 15-second target waits for (the plain run is its baseline, next)
        for flags in "--graph" "" "--amp" "--compile" "--amp --compile"; do
            name="train-final${flags:+-}${flags//--/}"
            name=${name// /-}
            # shellcheck disable=SC2086 # the flags are separate words
            step speed "$name" train "$work/runs/$name" "$(after $left)" -- \
                python3 -m mnist_lesson train final --no-progress --device $device --out "$work/runs/$name" $flags
            left=$((left - 1))
        done
        step speed speed-levers speed "$work/speed_levers.json" "$(after 0)" -- \
            python3 benchmarks/speed.py --mode levers --epochs 2 --repeats 1 --device $device \
            --json "$work/speed_levers.json" "${check[@]}"
        ;;
    seeds-final)
        # shellcheck disable=SC2086 # the seeds are separate words
        step seeds-final seeds-final seeds "$work/seeds_final.json" "$(after 0)" -- \
            python3 benchmarks/seeds.py --model final --device $device --seeds $seeds_final \
            --out "$work/seeds_final.json" "${check[@]}"
        ;;
    seeds-rungs)
        # shellcheck disable=SC2086 # the models are separate words
        set -- $models
        left=$#
        for model in $models; do
            # shellcheck disable=SC2086 # the seeds are separate words
            step seeds-rungs "seeds-$model" seeds "$work/seeds_$model.json" "$(share $left)" -- \
                python3 benchmarks/seeds.py --model $model --device $device --seeds $seeds_rungs \
                --out "$work/seeds_$model.json" "${check[@]}"
            left=$((left - 1))
        done
        ;;
    notebooks)
        # shellcheck disable=SC2086 # the notebooks are separate words
        step notebooks notebooks-smoke notebooks "$work/notebooks_smoke.json" "$(after $((1 - smoke)))" -- \
            env -u MPLBACKEND MNIST_LESSON_SMOKE=1 python3 benchmarks/gpu_notebooks.py --smoke-check $notebooks_smoke \
            --out "$work/notebooks_smoke.json" --executed "$work/executed/smoke"
        if [ $smoke = 0 ]; then
            step notebooks notebooks-full notebooks "$work/notebooks_full.json" "$(after 0)" -- \
                env -u MPLBACKEND python3 benchmarks/gpu_notebooks.py 02 --out "$work/notebooks_full.json" --executed "$work/executed/full"
        fi
        [ -d "$work/executed" ] && tar czf "$out/notebooks_executed.tar.gz" -C "$work" executed
        ;;
    esac
    report
done
trap - INT TERM
if [ $failed = 0 ]; then verdict="every step exited 0"; else verdict="a step failed, timed out or was skipped"; fi
echo "gpu_check: $verdict; see $out/gpu_check.json"
exit $failed
