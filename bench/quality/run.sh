#!/usr/bin/env bash
# bench/quality/run.sh: the GPU-machine side of docs/quality.md (issue 14).
#
# Runs from the repository root on the GPU machine, with what was built and
# made on the development machine carried (bench/quality/README.md):
#   .gpu/bin/loracc, .gpu/bin/order        go build -o .gpu/bin/loracc ./cmd/loracc
#                                          go build -o .gpu/bin/order ./bench/gpu/order
#   .gpu/quality/carry/corpus.tar.xz       scripts/quality/corpus.sh
#   .gpu/quality/carry/model/ (optional)   a pretrained model brought back from an
#                                          earlier `pretrain` call (its model.tgz)
# and ONNX Runtime with the CUDA provider staged (../shared/gpu/stage-ort.sh;
# `source /root/ort/env.sh`; the CPU-only steps do not need it).
#
# Modes (each meant to fit one 10-minute device call, not yet timed; `all` needs more):
#   smoke        everything on a tiny model and a slice of the corpus (not timed yet;
#                expected 1-3 min, mostly eight Python start-ups importing transformers)
#   pretrain     tokenizer, pretraining, int8 model, ONNX exports, tokenizer
#                check against loracc, learning-rate sweep -> model.tgz
#   arms         base, full fine-tuning, PEFT and loracc LoRA (CUDA), one job
#                on the CPU beside CUDA, generations, the table -> arms.tgz
#   arms-torch / arms-loracc   the two halves of arms, for two calls
#   all          pretrain then arms
# Results: $OUT (MODE.log, *.tgz, pretrain.json, quality_table.md, summary.json);
# work files stay in $WORK (default /root/quality) while the machine is warm.
set -uo pipefail
ROOT=$(pwd)
BIN=$ROOT/.gpu/bin
HERE=$ROOT/bench/quality
CARRY=$ROOT/.gpu/quality/carry
WORK=${WORK:-/root/quality}
OUT=${OUT:-/tmp/out}
CPU_STEPS=${CPU_STEPS:-20}
DEVICE=${DEVICE:-cuda} # the arms' loracc device (cpu for a dry run without a GPU)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$WORK" "$OUT"
[ -n "${LORACC_ORT_LIB:-}" ] || { [ -f /root/ort/env.sh ] && source /root/ort/env.sh; }
[ -n "${LORACC_ORT_LIB:-}" ] || echo "warning: LORACC_ORT_LIB is not set (stage ONNX Runtime first): the loracc steps will fail"

now() { date +%s.%N; }

# corpus: the splits, unpacked once and checked against the committed manifest
corpus() {
	local C=$WORK/corpus
	if [ ! -f "$C/manifest.json" ]; then
		tar -C "$WORK" -xJf "$CARRY/corpus.tar.xz" || { echo "no corpus: run scripts/quality/corpus.sh and carry .gpu/quality/carry"; exit 1; }
	fi
	python3 - "$C" "$ROOT/testdata/quality/corpus-manifest.json" <<'PY' || exit 1
import hashlib, json, os, sys
c, m = sys.argv[1], json.load(open(sys.argv[2]))
for name, s in m["splits"].items():
    got = hashlib.sha256(open(os.path.join(c, s["file"]), "rb").read()).hexdigest()
    if got != s["sha256"]:
        sys.exit(f"corpus: {s['file']} has sha256 {got}, the manifest says {s['sha256']}")
print("corpus matches testdata/quality/corpus-manifest.json")
PY
}

# tokcheck W: loracc's tokenizer reader gives HF tokenizers' ids on held-out text
tokcheck() {
	local W=$1
	"$BIN"/loracc data "$W"/data/tokenizer_check.jsonl --tokenizer "$W"/model --json --max-length 100000 \
		>"$W"/data/tokenizer_check.loracc.jsonl 2>"$W"/data/tokenizer_check.loracc.err
	echo "loracc data exit $?: $(tail -1 "$W"/data/tokenizer_check.loracc.err)"
	python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
want = json.load(open(f"{w}/data/tokenizer_check.ids.json"))
try:
    got = [json.loads(l)["input_ids"] for l in open(f"{w}/data/tokenizer_check.loracc.jsonl") if l.strip()]
except Exception as e:
    got = []
res = {"records": len(want), "loracc_records": len(got), "equal": sum(a == b for a, b in zip(want, got)),
       "tokens": sum(map(len, want))}
bad = [i for i, (a, b) in enumerate(zip(want, got)) if a != b]
if bad:
    i = bad[0]
    k = next((j for j, (x, y) in enumerate(zip(want[i], got[i])) if x != y), min(len(want[i]), len(got[i])))
    res["first_mismatch"] = {"record": i, "position": k, "hf": want[i][max(0, k - 3):k + 5], "loracc": got[i][max(0, k - 3):k + 5]}
res["ok"] = res["equal"] == res["records"] == res["loracc_records"]
json.dump(res, open(f"{w}/tokenizer_check.json", "w"), indent=1)
print("tokenizer check:", json.dumps(res))
PY
}

# job W NAME SEED LR STEPS WARMUP BATCH INIT DEVICE DIR: loracc inject (PEFT's initial adapter) + train
job() {
	local W=$1 name=$2 seed=$3 lr=$4 steps=$5 warmup=$6 batch=$7 init=$8 dev=$9 dir=${10}
	mkdir -p "$dir"
	"$BIN"/loracc inject "$W"/model.fp32.onnx --from-adapter "$init" -o "$dir"/model.lora.onnx >"$dir"/inject.log 2>&1 \
		|| { echo "inject $name failed: $(tail -3 "$dir"/inject.log)"; return 1; }
	rm -rf "$dir"/run
	local t0; t0=$(now)
	timeout 300 "$BIN"/loracc train "$dir"/model.lora.onnx --data "$W"/data/downstream_train.tokens.jsonl \
		--eval "$W"/data/downstream_heldout.tokens.jsonl --loss lm --logits logits --labels labels \
		--max-steps "$steps" --eval-every "$steps" --batch-size "$batch" --lr "$lr" --schedule cosine --warmup "$warmup" \
		--weight-decay 0 --clip-norm 1 --seed "$seed" --device "$dev" --save-every 0 --out "$dir"/run >"$dir"/train.log 2>&1
	local rc=$?
	echo "$(python3 -c "print($(now)-$t0)") exit $rc" >"$dir"/wall_s.txt
	echo "loracc $name ($dev): exit $rc, $(cat "$dir"/wall_s.txt | cut -d' ' -f1) s; $(grep -h 'eval loss\|rror' "$dir"/train.log | tail -2 | tr '\n' ' ')"
}

# arms_torch W [--smoke]: plan, PEFT initial adapters, base / full / PEFT arms
arms_torch() {
	local W=$1 S=${2:-}
	timeout 120 python3 "$HERE"/arms.py data --work "$W" --corpus "$WORK"/corpus $S || return 1
	timeout 300 python3 "$HERE"/arms.py prepare --work "$W" --order "$BIN"/order $S || return 1
	timeout 540 python3 "$HERE"/arms.py torch --work "$W" --order "$BIN"/order $S
}

# arms_loracc W [--smoke]: every plan job on CUDA, one on the CPU beside CUDA, scores, generations
arms_loracc() {
	local W=$1 S=${2:-} steps=$CPU_STEPS
	[ -n "$S" ] && steps=3
	if [ ! -f "$W"/arms/plan.tsv ]; then
		timeout 120 python3 "$HERE"/arms.py data --work "$W" --corpus "$WORK"/corpus $S || return 1
		timeout 300 python3 "$HERE"/arms.py prepare --work "$W" --order "$BIN"/order $S || return 1
	fi
	"$BIN"/loracc inspect "$W"/model.fp32.onnx --rank 8 >"$W"/arms/inspect.txt 2>&1; tail -3 "$W"/arms/inspect.txt
	while IFS=$'\t' read -r name seed lr st wu batch init; do
		job "$W" "$name" "$seed" "$lr" "$st" "$wu" "$batch" "$init" "$DEVICE" "$W"/arms/loracc/"$name" </dev/null
	done <"$W"/arms/plan.tsv
	# one job on the CPU and on CUDA, CPU_STEPS steps each (attn r8 seed 0; the smoke run's first job)
	local cj; cj=$(awk -F'\t' '$1=="attn-r8-s0"' "$W"/arms/plan.tsv); [ -n "$cj" ] || cj=$(head -1 "$W"/arms/plan.tsv)
	IFS=$'\t' read -r name seed lr st wu batch init <<<"$cj"
	for dev in cpu cuda; do
		job "$W" "$name" "$seed" "$lr" "$steps" 1 "$batch" "$init" "$dev" "$W"/arms/cpucuda/"$name"/tmp_$dev
		rm -rf "$W"/arms/cpucuda/"$name"/run_$dev && mv "$W"/arms/cpucuda/"$name"/tmp_$dev/run "$W"/arms/cpucuda/"$name"/run_$dev
	done
	CPU_JOB=$name timeout 120 python3 "$HERE"/arms.py cpucuda --work "$W" $S
	timeout 400 python3 "$HERE"/arms.py loracc --work "$W" --order "$BIN"/order $S
	generations "$W"
}

# generations W: greedy continuations of two prompts, base model and adapted (loracc generate, CPU)
generations() {
	local W=$1 m=$1/model/model.onnx ad
	[ -f "$m" ] || m=$W/model.fp32.onnx
	ad=$W/arms/loracc/all-r16-s0/run/adapter; [ -d "$ad" ] || ad=$(ls -d "$W"/arms/loracc/*/run/adapter 2>/dev/null | head -1)
	{
		for p in "* The math module has a new function" "New Features"; do
			echo "== prompt: $p"
			echo "-- base ($m)"; timeout 60 "$BIN"/loracc generate "$m" --tokenizer "$W"/model --prompt "$p" --max-new-tokens 60 --device cpu 2>&1
			echo; echo "-- with $ad"; timeout 60 "$BIN"/loracc generate "$m" --tokenizer "$W"/model --adapter "$ad" --prompt "$p" --max-new-tokens 60 --device cpu 2>&1
			echo
		done
	} >"$W"/arms/generations.txt
	cat "$W"/arms/generations.txt
}

pack_model() { # W NAME
	(cd "$1" && tar czf "$OUT"/$2.tgz model pretrain.json tokenizer_check.json data/stats.json arms/sweep.json 2>/dev/null) || true
}

pack_arms() { # W NAME
	(cd "$1" && tar czf "$OUT"/$2.tgz pretrain.json tokenizer_check.json data/stats.json arms/*.json arms/*.jsonl arms/*.txt arms/*.md \
		arms/curves arms/loracc/*/*.log arms/loracc/*/wall_s.txt arms/loracc/*/run/metrics.csv arms/loracc/*/run/memory.json \
		arms/cpucuda/*/run_*/metrics.csv arms/cpucuda/*/*/*.log 2>/dev/null) || true # some globs match nothing
}

summarize() { # W [DIR]: the tables, to DIR (default $OUT)
	python3 "$HERE"/summarize.py "$1" --md "${2:-$OUT}"/quality_table.md --json "${2:-$OUT}"/summary.json
}

# smoke: every step on a tiny model; exits non-zero when one failed, so that
# `run.sh smoke && run.sh pretrain` stops before spending the real run's time
smoke() {
	local W=$WORK/smoke t0 fails=""; t0=$(now)
	rm -rf "$W"
	corpus
	timeout 240 python3 "$HERE"/pretrain.py --corpus "$WORK"/corpus --work "$W" --smoke || fails+=" pretrain"
	grep -q '"failed"' "$W"/pretrain.json 2>/dev/null && fails+=" export"
	tokcheck "$W"
	grep -q '"ok": true' "$W"/tokenizer_check.json 2>/dev/null || fails+=" tokenizer-check"
	timeout 120 python3 "$HERE"/arms.py sweep --work "$W" --order "$BIN"/order --smoke || fails+=" sweep"
	arms_torch "$W" --smoke || fails+=" arms-torch"
	arms_loracc "$W" --smoke || fails+=" arms-loracc"
	grep -q '"failed": true' "$W"/arms/rows_loracc.jsonl 2>/dev/null && fails+=" loracc-runs"
	[ -f "$W"/arms/rows_loracc.jsonl ] || fails+=" loracc-rows"
	grep -q '"equal": true' "$W"/arms/cpu_vs_cuda.json 2>/dev/null || fails+=" cpu-vs-cuda"
	summarize "$W" "$W"/arms
	pack_arms "$W" smoke
	echo "smoke done in $(python3 -c "print(round($(now)-$t0))") s; failed:${fails:- nothing}"
	[ -z "$fails" ]
}

pretrain() {
	local W=$WORK/full
	corpus
	local rc=0
	timeout 480 python3 "$HERE"/pretrain.py --corpus "$WORK"/corpus --work "$W" ${PRETRAIN_ARGS:-} || { echo "pretrain failed"; rc=1; }
	tokcheck "$W"
	timeout 300 python3 "$HERE"/arms.py sweep --work "$W" --order "$BIN"/order || { echo "sweep failed"; rc=1; }
	pack_model "$W" model
	cp "$W"/pretrain.json "$OUT"/ 2>/dev/null
	return $rc
}

# model_from_carry: arms on a fresh machine read the model a pretrain call brought back
model_from_carry() {
	local W=$WORK/full
	if [ ! -f "$W"/model/weights_q8.safetensors ] && [ -f "$CARRY"/model/weights_q8.safetensors ]; then
		mkdir -p "$W"/arms && cp -r "$CARRY"/model "$W"/model
		for f in pretrain.json tokenizer_check.json; do [ -f "$CARRY"/$f ] && cp "$CARRY"/$f "$W"/; done
		[ -f "$CARRY"/arms/sweep.json ] && cp "$CARRY"/arms/sweep.json "$W"/arms/
		echo "model from $CARRY/model"
	fi
	[ -f "$W"/model/weights_q8.safetensors ] || { echo "no pretrained model in $W/model (run pretrain first)"; exit 1; }
}

case "${1:-}" in
smoke) smoke 2>&1 | tee "$OUT"/"$1".log ;;
pretrain) pretrain 2>&1 | tee "$OUT"/"$1".log ;;
arms-torch) { corpus; model_from_carry; arms_torch "$WORK"/full; summarize "$WORK"/full; pack_arms "$WORK"/full arms_torch; } 2>&1 | tee "$OUT"/"$1".log ;;
arms-loracc) { corpus; model_from_carry; arms_loracc "$WORK"/full; summarize "$WORK"/full; pack_arms "$WORK"/full arms; } 2>&1 | tee "$OUT"/"$1".log ;;
arms) { corpus; model_from_carry; arms_torch "$WORK"/full; arms_loracc "$WORK"/full; summarize "$WORK"/full; pack_arms "$WORK"/full arms; } 2>&1 | tee "$OUT"/"$1".log ;;
all) { pretrain; arms_torch "$WORK"/full; arms_loracc "$WORK"/full; summarize "$WORK"/full; pack_arms "$WORK"/full arms; } 2>&1 | tee "$OUT"/"$1".log ;;
*) echo "usage: $0 smoke|pretrain|arms|arms-torch|arms-loracc|all" >&2; exit 2 ;;
esac
