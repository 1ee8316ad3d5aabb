#!/usr/bin/env bash
# Memory over a long run: trains the seed example for STEPS steps
# (default 10000) and samples the process's RSS every 0.02 s.
#
#   bench/rss.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-10000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
go build -o "$dir/loracc" ./cmd/loracc
"$dir/loracc" demo --dir "$dir/demo" >/dev/null 2>&1   # makes seed.lora.onnx and train.jsonl
"$dir/loracc" train "$dir/demo/seed.lora.onnx" --data "$dir/demo/train.jsonl" --loss mse --logits y --labels labels \
	--max-steps "$steps" --batch-size 32 --lr 0.001 --device cpu --save-every 1000 --out "$dir/run" >/dev/null 2>"$dir/log" &
pid=$!
: > "$dir/rss"
while kill -0 "$pid" 2>/dev/null; do
	awk '/VmRSS/ {print $2}' "/proc/$pid/status" >> "$dir/rss" 2>/dev/null || true
	sleep 0.02
done
wait "$pid"
python3 - "$dir/rss" "$steps" <<'PY'
import sys
xs = [int(l) for l in open(sys.argv[1]) if l.strip()]
n = len(xs)
q = max(1, n // 4)
first, last = xs[q:2*q], xs[-q:]
print(f"{sys.argv[2]} steps, {n} samples: RSS min {min(xs)/1024:.1f} MB, max {max(xs)/1024:.1f} MB; "
      f"2nd quarter mean {sum(first)/len(first)/1024:.1f} MB, last quarter mean {sum(last)/len(last)/1024:.1f} MB")
PY
