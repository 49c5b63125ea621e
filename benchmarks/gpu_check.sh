#!/usr/bin/env bash
# The speed ladder's GPU measurements in one go, for a session with a CUDA GPU (none of the sessions that
# built it had one; the time it takes there is not known yet). Logs and results go under ${OUT:-gpu_check}.
#   0. the data must be in place first: `python -m mnist_lesson data` (or MNIST_LESSON_DATA pointing at a copy
#      on a machine without network), so that no run below pays for a download;
#   1. `python -m mnist_lesson train final` as a student runs it, then with --amp, --compile and both: the
#      command's whole wall time (interpreter start and imports included) is what the 15-second target is about;
#   2. benchmarks/speed.py with the full 15-epoch recipe: the seed-style DataLoader and every lever, side by side;
#   3. before a lever becomes a default, rerun benchmarks/seeds.py --model final with it (five seeds).
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
python benchmarks/speed.py --epochs 15 --repeats 1 --json "$out/speed_cuda.json" 2>&1 | tee "$out/speed.log"
