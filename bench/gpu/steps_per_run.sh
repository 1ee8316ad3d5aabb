#!/usr/bin/env bash
# bench/gpu/steps_per_run.sh: does keeping the adapter and optimizer state
# in the graph for K steps (train --steps-per-run K) pay on the GPU?
# GPT-2 small, LoRA r=16 on c_attn (bench/gpu/torch_side.py's set-up),
# batch 8 × 512, 48 steps, CUDA, K = 1, 4, 8: median tokens/s over steps
# 9..48, wall time, peak GPU memory, and whether the loss column matches
# K=1. Run on the GPU machine after staging ORT (see bench/gpu/run.sh).
set -uo pipefail
ROOT=$(pwd)
BIN=$ROOT/.gpu/bin
W=${WORK:-/root/bench}/gpt2
OUT=${OUT:-/tmp/out}
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
[ -f "$W"/model.onnx ] || timeout 300 python3 bench/gpu/torch_side.py --model gpt2 --dir "$W" --modes none 2>&1 | grep -v Warning | tail -3
re=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['loracc_target_regex'])" "$W"/torch_summary.json)
"$BIN"/loracc inject "$W"/model.onnx --rank 16 --target "$re" -o "$W"/model.lora.onnx | tail -1
for k in ${KS:-1 4 8}; do
	rm -rf "$W"/run$k
	nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$W"/mem$k.txt 2>/dev/null &
	mp=$!
	t0=$(date +%s.%N)
	timeout 280 "$BIN"/loracc train "$W"/model.lora.onnx --adapter "$W"/peft_init --data "$W"/data.jsonl --loss lm \
		--logits logits --labels labels --max-steps 48 --batch-size 8 --lr 1e-4 --weight-decay 0 --clip-norm 0 \
		--device cuda --save-every 0 --steps-per-run $k --out "$W"/run$k >"$W"/train$k.log 2>&1
	rc=$?
	t1=$(date +%s.%N)
	kill $mp 2>/dev/null
	python3 - "$W" $k $rc "$t0" "$t1" <<'PY'
import csv, statistics, sys
w, k, rc, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
rows = list(csv.DictReader(open(f"{w}/run{k}/metrics.csv"))) if rc == 0 else []
tps = [float(r["tokens_per_s"]) for r in rows if int(r["step"]) > 8]
mem = [int(x) for x in open(f"{w}/mem{k}.txt") if x.strip().isdigit()]
base = list(csv.DictReader(open(f"{w}/run1/metrics.csv"))) if k != 1 else rows
same = [r["loss"] for r in rows] == [r["loss"] for r in base]
worst = max((abs(float(a["loss"]) - float(b["loss"])) / abs(float(b["loss"])) for a, b in zip(rows, base)), default=float("nan"))
print(f"K={k} rc={rc} wall={t1-t0:.1f}s median_tokens_per_s={statistics.median(tps) if tps else 0:.0f} "
      f"peak_mem_MiB={max(mem) if mem else 0} loss_column_identical_to_K1={same} worst_rel_loss_diff={worst:.2e}")
PY
	tail -2 "$W"/train$k.log
done 2>&1 | tee "$OUT"/steps_per_run.txt
