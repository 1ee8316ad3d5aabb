#!/usr/bin/env bash
# bench/gpu/kernels.sh [DIR VOCAB]: where the GPU time of one static-shape
# training step goes, kernel by kernel, measured with Nsight Compute
# (gpu__time_duration of every kernel of one run of train.onnx).
# Without arguments it exports GPT-2 small itself; with DIR (holding
# model.lora.onnx, as `run.sh round` leaves it) and the model's vocabulary
# size it profiles that model. Batch and sequence: BATCH, SEQ (8, 512).
# Run on the GPU machine after staging ORT (source /root/ort/env.sh), with
# .gpu/bin/loracc and .gpu/bin/latency built here. The step is compiled as
# train --static compiles it for CUDA (--provider cuda), less the rewrites
# named in DISABLE (--disable-rewrite). Results: $OUT/kernels.txt.
set -uo pipefail
ROOT=$(pwd)
BIN=$ROOT/.gpu/bin
OUT=${OUT:-/tmp/out}
BATCH=${BATCH:-8}
SEQ=${SEQ:-512}
export HF_HUB_OFFLINE=1
if [ $# -ge 2 ]; then
	W=$1 VOCAB=$2
else
	W=${WORK:-/root/bench}/kernels VOCAB=50257
	mkdir -p "$W"
	timeout 300 python3 bench/gpu/torch_side.py --model gpt2 --dir "$W" --modes none 2>&1 | grep -v Warning | tail -2
	re=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['loracc_target_regex'])" "$W"/torch_summary.json)
	"$BIN"/loracc inject "$W"/model.onnx --rank 16 --target "$re" -o "$W"/model.lora.onnx | tail -1
fi
mkdir -p "$OUT"
"$BIN"/loracc export-train "$W"/model.lora.onnx --loss lm --logits logits --labels labels --weight-decay 0 --clip-norm 0 --static batch=$BATCH,seq=$SEQ \
	--provider cuda ${DISABLE:+--disable-rewrite "$DISABLE"} -o "$W"/g | tail -1
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
echo "ncu: $ncu"
# warm-up 1 (not profiled: ncu skips the first launches of it with -s), then one step
timeout "${NCU_TIMEOUT:-450}" "$ncu" --metrics gpu__time_duration.sum --csv --log-file "$W"/ncu.csv \
	"$BIN"/latency -model "$W"/g/train.onnx -device cuda -batch "$BATCH" -seq "$SEQ" -vocab "$VOCAB" -n 1 -warmup 0 -outputs loss >/dev/null 2>"$W"/ncu.err
echo "ncu exit $?"
python3 - "$W"/ncu.csv <<'PY' | tee "$OUT"/kernels.txt
import csv, collections, sys
lines = open(sys.argv[1]).read().splitlines()
start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
if start is None:
    sys.exit("no ncu table in " + sys.argv[1])
by, n, total = collections.Counter(), collections.Counter(), 0.0
for d in csv.DictReader(lines[start:]):
    if d.get("Metric Name") != "gpu__time_duration.sum":
        continue
    v = float(d["Metric Value"].replace(",", ""))
    ns = v * {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(d.get("Metric Unit", "nsecond"), 1)
    k = d["Kernel Name"][:90]
    by[k] += ns; n[k] += 1; total += ns
print(f"{sum(n.values())} kernels, total GPU time {total/1e6:.2f} ms")
for k, v in by.most_common(40):
    print(f"{v/1e6:8.3f} ms {n[k]:5d}x  {k}")
PY
cp "$W"/ncu.err "$OUT"/ncu.err 2>/dev/null
