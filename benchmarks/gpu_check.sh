#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go, for a session that has one (none of the sessions that built the
# course had one). Logs and results go under ${OUT:-gpu_check}; nothing in the repository is changed.
#   0. the data must be in place first: `python -m mnist_lesson data` (or MNIST_LESSON_DATA pointing at a copy
#      on a machine without network), so that no run below pays for a download;
#   1. `python -m mnist_lesson train final` as a student runs it, then with --amp, --compile and both: the
#      command's whole wall time (interpreter start and imports included) is what the 15-second target is about;
#   2. benchmarks/speed.py with the full 15-epoch recipe: the assignment's DataLoader and every lever, side by side;
#   3. with SEEDS=1 (optional, minutes per model on a GPU): the multi-seed verification of the final model and every
#      rung of the ladder, seeds 0-9, into $OUT/seeds_MODEL.json (copy them to mnist_lesson/evidence/ to use them).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name())"
python -m mnist_lesson data
for flags in "" "--amp" "--compile" "--amp --compile"; do
    name="train${flags// /}"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    python -m mnist_lesson train final --no-progress --out "$out/runs" $flags > "$out/$name.log" 2>&1
    end=$(date +%s.%N)
    echo "train final $flags: $(python -c "print(f'{$end - $start:.1f}')") s for the whole command" | tee -a "$out/summary.txt"
    tail -3 "$out/$name.log"
done
python benchmarks/speed.py --epochs 15 --repeats 1 --json "$out/speed_levers_cuda.json" 2>&1 | tee "$out/speed.log"
if [ "${SEEDS:-0}" = "1" ]; then
    for model in final under8k under5k under3762; do
        python benchmarks/seeds.py --model "$model" --device cuda --seeds 0 1 2 3 4 5 6 7 8 9 \
            --out "$out/seeds_$model.json" 2>&1 | tail -3 | tee -a "$out/seeds.log"
    done
fi
