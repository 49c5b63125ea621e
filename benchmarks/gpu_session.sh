#!/usr/bin/env bash
# The device tool's whole lease in one call (about 9 minutes of a 15-minute allowance): gpu_check.sh's parts, the
# speed part alone on the machine first (its figures are timings), then the rest side by side in four processes
# (seeds of `final` in two halves, seeds of the rungs, the notebooks), whose figures are accuracies and whether
# cells ran, not timings. NOTHING OF THIS HAD RUN ON A GPU when it was written; see gpu_check.sh.
#
#   benchmarks/gpu_session.sh [--cpu-smoke] [--speed-seconds N] [--side-seconds N]
#
# Call it from the device tool with carry [".whl", "data"] and a timeout_s of speed + side seconds + about 60:
#   data/  the four MNIST files, gzipped (gpu_check.sh's header says how; about 11 MB)
#   .whl/  wheels of what the notebooks need and the machine lacks (nbclient, ipykernel, torchinfo and their
#          needs; the device tool's README says how to download them for Python 3.12), installed here with --target
# What comes back under $OUT (at most 8 files): speed.json, final_a.json, final_b.json, rungs.json and
# notebooks.json (each one gpu_check.json), notebooks_executed.tar.gz and logs.tar.gz (every gpu_check.log).
# --cpu-smoke runs the same on the CPU in smoke mode (a few minutes), to check this script before a lease.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
smoke=() speed_seconds=230 side_seconds=250
while [ $# -gt 0 ]; do
    case $1 in
    --cpu-smoke) smoke=(--cpu-smoke) ;;
    --speed-seconds) speed_seconds=$2; shift ;;
    --side-seconds) side_seconds=$2; shift ;;
    *) echo "gpu_session: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ -n "${OUT:-}" ] || { echo "gpu_session: set OUT (the device tool does)" >&2; exit 2; }
if compgen -G "$repo/.whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$repo"/.whl/*.whl || echo "gpu_session: the carried wheels did not install; the notebooks part will fail" >&2
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
results=$(mktemp -d "${TMPDIR:-/tmp}/gpu_session.XXXXXX")
check() { # NAME PART... : one gpu_check.sh into results/NAME
    local name=$1
    shift
    bash "$repo/benchmarks/gpu_check.sh" "${smoke[@]}" --data "$repo/data" --out "$results/$name" "$@" \
        >"$results/$name.out" 2>&1
    echo "== $name: exit $?"
    grep -E '^\[gpu_check\]|^notebook |^seed |^wall time|^verdict' "$results/$name.out" | tail -n 30
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
start=$SECONDS
check speed speed --part-seconds "$speed_seconds"
echo "== speed part: $((SECONDS - start)) s"
if [ ${#smoke[@]} -eq 0 ]; then final_a="0 1 2 3 4" final_b="5 6 7 8 9" rungs="0"; else final_a=0 final_b=1 rungs=0; fi
check final_a seeds-final --seeds "$final_a" --part-seconds "$side_seconds" &
check final_b seeds-final --seeds "$final_b" --part-seconds "$side_seconds" &
check rungs seeds-rungs --seeds "$rungs" --part-seconds "$side_seconds" &
check notebooks notebooks --part-seconds "$side_seconds" &
wait
echo "== all parts: $((SECONDS - start)) s"
for name in speed final_a final_b rungs notebooks; do
    [ -f "$results/$name/gpu_check.json" ] && cp "$results/$name/gpu_check.json" "$OUT/$name.json"
done
[ -f "$results/notebooks/notebooks_executed.tar.gz" ] && cp "$results/notebooks/notebooks_executed.tar.gz" "$OUT/"
(cd "$results" && tar czf "$OUT/logs.tar.gz" ./*.out ./*/gpu_check.log 2>/dev/null)
ls -la "$OUT"
