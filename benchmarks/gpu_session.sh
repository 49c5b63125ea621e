#!/usr/bin/env bash
# A device lease in two calls of the device tool (each under its 10-minute limit; about 11-12 minutes of a 15-minute
# allowance with the machine's start): `--phase speed`, gpu_check.sh's speed part alone on the machine (its figures
# are timings), then `--phase side`, everything else side by side, one process per seed (seeds fit only that way: a
# seed of `final` took 82-106 s on the H200 with 3 to 7 others beside it), so its figures are accuracies and whether
# cells ran, not timings: every seed of `final` (default 0-9), the rungs' seeds (default 0 1 of under8k, under5k and
# under3762) and the notebooks part. Call the second at once, while the machine is still warm (30 s). First ran on
# an H200 on 2026-12-04 in an earlier, one-call form (docs/performance.md).
#
#   benchmarks/gpu_session.sh --phase speed|side|both|graph-seeds [--cpu-smoke] [--speed-seconds N] [--side-seconds N]
#                             [--final "0 1 ..."] [--rungs "0 1"] [--data ROOT]
#
# Call it from the device tool with carry [".whl", "data"] and timeout_s 480 for `--phase speed` (speed-seconds 420),
# 300 for `--phase side` (side-seconds 240):
#   data/  the four MNIST files, gzipped (gpu_check.sh's header says how; about 11 MB)
#   .whl/  wheels of what the notebooks need and the machine lacks (nbclient, ipykernel, torchinfo, ipywidgets and
#          their needs: benchmarks/gpu_wheels.txt lists them and how to download them), installed with --target
# What comes back under $OUT: speed.json (the speed part's gpu_check.json) from the first call; results.tar.gz (a
# gpu_check.json per process, NAME.json, every log, the executed notebooks) from the second. Then, here,
# `python benchmarks/gpu_collect.py FOLDER` on the unpacked folder folds the seeds into
# mnist_lesson/evidence/seeds_MODEL_cuda.json. `--phase graph-seeds` trains `final --graph` (benchmarks/seeds.py) on
# every seed of --final, one process each, side by side, for at most --side-seconds each, into graph_seeds.tar.gz. --cpu-smoke runs the same on the CPU in smoke mode (a few minutes, both
# phases with --phase both), to check this script before a lease.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
smoke=() speed_seconds=420 side_seconds=240 final="0 1 2 3 4 5 6 7 8 9" rungs="0 1" data="$repo/data" phase=""
while [ $# -gt 0 ]; do
    case $1 in
    --cpu-smoke) smoke=(--cpu-smoke) ;;
    --phase) phase=$2; shift ;;
    --speed-seconds) speed_seconds=$2; shift ;;
    --side-seconds) side_seconds=$2; shift ;;
    --final) final=$2; shift ;;
    --data) data=$2; shift ;;
    --rungs) rungs=$2; shift ;;
    *) echo "gpu_session: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ -n "${OUT:-}" ] || { echo "gpu_session: set OUT (the device tool does)" >&2; exit 2; }
case $phase in speed | side | both | graph-seeds) ;; *) echo "gpu_session: say --phase speed, side, both or graph-seeds" >&2; exit 2 ;; esac
if compgen -G "$repo/.whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$repo"/.whl/*.whl || echo "gpu_session: the carried wheels did not install; the notebooks part will fail" >&2
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
results=$(mktemp -d "${TMPDIR:-/tmp}/gpu_session.XXXXXX")
check() { # NAME PART... : one gpu_check.sh into results/NAME
    local name=$1
    shift
    bash "$repo/benchmarks/gpu_check.sh" "${smoke[@]}" --data "$data" --out "$results/$name" "$@" \
        >"$results/$name.out" 2>&1
    echo "== $name: exit $?"
    grep -E '^\[gpu_check\]|^notebook |^seed |^wall time|^verdict' "$results/$name.out" | tail -n 30
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
start=$SECONDS
if [ "$phase" = speed ] || [ "$phase" = both ]; then
    check speed speed --part-seconds "$speed_seconds"
    echo "== speed part: $((SECONDS - start)) s"
    [ -f "$results/speed/gpu_check.json" ] && cp "$results/speed/gpu_check.json" "$OUT/speed.json"
fi
[ "$phase" != speed ] || { ls -la "$OUT"; exit 0; }
if [ "$phase" = graph-seeds ]; then # `final --graph` on every seed of --final, one process each, side by side
    device=cuda
    [ ${#smoke[@]} -eq 0 ] || { final="0 1"; device=cpu; export MNIST_LESSON_SMOKE=1; }
    export MNIST_LESSON_DATA=$data PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" # the package from this checkout
    # Unpacks and verifies the carried files (as gpu_check.sh does), so that nothing reaches for the network.
    python3 "$repo/benchmarks/gpu_report.py" data "$data" --out "$results/data.json" || exit 3
    for seed in $final; do
        # shellcheck disable=SC2046 # the smoke flags are separate words
        timeout --kill-after=20 "$side_seconds" python3 "$repo/benchmarks/seeds.py" --model final --graph \
            --device $device --seeds "$seed" --out "$results/final_graph_s$seed.json" \
            $([ ${#smoke[@]} -eq 0 ] || echo --smoke-check --threads 1) >"$results/final_graph_s$seed.out" 2>&1 &
    done
    wait
    echo "== graph seeds: $((SECONDS - start)) s"
    grep -h -E '^seed [0-9]+:|Error' "$results"/final_graph_s*.out
    (cd "$results" && tar czf "$OUT/graph_seeds.tar.gz" ./*.json ./*.out)
    ls -la "$OUT"
    exit 0
fi
[ ${#smoke[@]} -eq 0 ] || { final="0 1"; rungs="0"; }
for seed in $final; do
    check "final_s$seed" seeds-final --seeds "$seed" --part-seconds "$side_seconds" &
done
for model in under8k under5k under3762; do
    for seed in $rungs; do
        check "${model}_s$seed" seeds-rungs --models "$model" --seeds "$seed" --part-seconds "$side_seconds" &
    done
done
check notebooks notebooks --part-seconds "$side_seconds" &
wait
echo "== all parts: $((SECONDS - start)) s"
(cd "$results" && for folder in */; do
    name=${folder%/}
    [ -f "$name/gpu_check.json" ] && cp "$name/gpu_check.json" "$name.json"
done
tar czf "$OUT/results.tar.gz" ./*.json ./*.out ./*/gpu_check.log ./*/notebooks_executed.tar.gz 2>/dev/null)
ls -la "$OUT"
