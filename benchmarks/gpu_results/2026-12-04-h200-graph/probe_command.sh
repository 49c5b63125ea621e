export PYTHONPATH=$PWD MNIST_LESSON_DATA=$PWD/data
python3 benchmarks/gpu_report.py data data --out /tmp/d.json >/dev/null || exit 3
mkdir -p /tmp/runs
for f in "--graph --no-autotune" "--no-autotune" "--graph --no-autotune --seed 1" "--graph --seed 1"; do
  s=$(date +%s.%N)
  python3 -m mnist_lesson train final --no-progress --device cuda --out /tmp/runs $f > /tmp/log.txt 2>&1
  e=$(date +%s.%N)
  echo "== train final $f: command $(awk "BEGIN{print $e-$s}") s"; grep -E "wall time|verdict|Error" /tmp/log.txt
  cat /tmp/log.txt >> $OUT/probe.log
done
(cd /tmp/runs && tar czf $OUT/histories.tar.gz */history.json)
