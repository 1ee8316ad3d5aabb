#!/usr/bin/env bash
# bench/gpu/run.sh: the GPU-machine side of docs/gpu-benchmarks.md.
#
# Runs from the repository root on the GPU machine after ONNX Runtime with
# the CUDA provider was staged (../shared/gpu/stage-ort.sh; source
# /root/ort/env.sh), with the binaries built here beforehand:
#   go build -o .gpu/bin/loracc ./cmd/loracc
#   go test -c -o .gpu/bin/cmd.test ./cmd/loracc
#   go build -o .gpu/bin/latency ./bench/gpu/latency
# Steps (each fits one 10-minute device call):
#   bench/gpu/run.sh tests          doctor, CUDA/PyTorch/portability tests, Python-ORT portability run
#   bench/gpu/run.sh gpt2           PyTorch+PEFT vs loracc train, GPT-2 small; inference latency
#   bench/gpu/run.sh llama-torch    export + PyTorch+PEFT for the ~1B Llama-style model
#   bench/gpu/run.sh llama-loracc   loracc train of the same (after llama-torch on the same machine)
#   bench/gpu/run.sh gpt2-extra     forward without the logits copy, train-step memory vs batch, ORT profiles
#   bench/gpu/run.sh llama-extra    loracc train of the 1B model with only 81559 MiB free (an H100's size)
#   bench/gpu/run.sh static         GPT-2 small: PyTorch+PEFT TF32 beside loracc's dynamic and static
#                                   (export-train --static) train/eval graphs, with ORT profiles
#   bench/gpu/run.sh round MODEL    gpt2 or llama1b: PyTorch+PEFT fp32/TF32/bf16/compile beside
#                                   `loracc train --static`, then the step's kernels (Nsight Compute)
#   bench/gpu/run.sh memcurve MODEL memory against batch and sequence length, both sides (POINTS, MEMFLAGS)
#   bench/gpu/run.sh dqforms        the int4 weight's dequantization forms, one product each (bench/gpu/dqforms; needs .gpu/bin/dqforms, latency)
#   bench/gpu/run.sh l7b            the 7B-shaped Llama, bf16: PyTorch + PEFT beside loracc (needs .gpu/bin/llama:
#                                   go build -o .gpu/bin/llama ./internal/testmodels/cmd/llama; KINDS7="bf16 bf16_recompute")
#   MODES=tf32,bf16w KINDS="static static_bf16 static_fp16" NCU=0 bench/gpu/run.sh round MODEL
#                                   the precision round: PyTorch + PEFT with the base in bf16 (the
#                                   usual recipe) beside loracc --compute-dtype bf16 and fp16
#                                   (kinds static_recompute, static_bf16_recompute: --recompute attention)
# Results go to $OUT (tarred) and stay in $WORK (default /root/bench).
set -uo pipefail
ROOT=$(pwd)
BIN=$ROOT/.gpu/bin
WORK=${WORK:-/root/bench}
OUT=${OUT:-/tmp/out}
STEPS=${STEPS:-50}
BATCH=${BATCH:-8}
SEQ=${SEQ:-512}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$WORK" "$OUT"

now() { date +%s.%N; }

# mempoll FILE: samples the GPU's used memory (MiB) every 100 ms in the background
mempoll() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$1" 2>/dev/null & echo $!; }

tests() {
	local log=$OUT/tests.log
	{
		echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
		echo "== loracc doctor"; "$BIN"/loracc doctor
		echo "== go tests"
		(cd cmd/loracc && timeout 420 "$BIN"/cmd.test -test.run 'TestCUDA|TestGenerateCUDAMatchesCPU|TestDoctorCUDAGraph|TestTrainMatchesPyTorch|TestTrainGraphPortable' -test.v)
		echo "tests exit $?"
		echo "== python onnxruntime portability"
		timeout 120 python3 testdata/torch/run_ort_python.py .gpu/port/gpt2_tiny_train \
			--batch testdata/ref/gpt2_tiny_batch.json --adapter testdata/ref/gpt2_tiny_lora_init \
			--ref testdata/ref/gpt2_tiny_ref.json --trained testdata/ref/gpt2_tiny_lora_trained.safetensors \
			--out "$OUT"/portability_gpt2_tiny.json
		echo "portability exit $?"
		if [ -d .gpu/peftcheck ]; then # testdata/torch/make_interop.sh, made on the dev machine
			echo "== PEFT out, ORT multi-LoRA (PEFT names and onnxruntime-genai names)"
			timeout 180 python3 testdata/torch/check_peft_interop.py .gpu/peftcheck "$OUT"/peft_interop.json
			echo "interop exit $?"
		fi
	} 2>&1 | tee "$log"
}

# loracc_train NAME: inject, train on CUDA with the PEFT init adapter, poll memory
loracc_train() {
	local W=$WORK/$1 re
	re=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['loracc_target_regex'])" "$W"/torch_summary.json)
	echo "== loracc inspect/inject ($1, target $re)"
	"$BIN"/loracc inspect "$W"/model.onnx --rank 16 --target "$re" --json >"$W"/inspect.json 2>"$W"/inspect.err
	"$BIN"/loracc inspect "$W"/model.onnx --rank 16 --target "$re" | tail -3
	local t0=$(now)
	"$BIN"/loracc inject "$W"/model.onnx --rank 16 --target "$re" -o "$W"/model.lora.onnx | tail -3
	echo "inject_s $(python3 -c "print($(now)-$t0)")"
	nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >"$W"/mem_idle.txt
	rm -rf "$W"/run
	local mp; mp=$(mempoll "$W"/mem_loracc_train.txt)
	t0=$(now)
	"$BIN"/loracc train "$W"/model.lora.onnx --adapter "$W"/peft_init --data "$W"/data.jsonl --loss lm \
		--logits logits --labels labels --max-steps "$STEPS" --batch-size "$BATCH" --lr 1e-4 --weight-decay 0 \
		--clip-norm 0 --device "$DEVICE" --save-every 0 --out "$W"/run >"$W"/train.log 2>&1
	local rc=$?
	echo "train_exit $rc train_wall_s $(python3 -c "print($(now)-$t0)")" | tee "$W"/train_wall.txt
	kill "$mp" 2>/dev/null
	grep -v '^\s*$' "$W"/train.log | tail -25
	if [ $rc -ne 0 ]; then
		echo "== train with --adapter failed; retrying from inject --from-adapter"
		cp "$W"/train.log "$W"/train_with_adapter_flag.log
		"$BIN"/loracc inject "$W"/model.onnx --from-adapter "$W"/peft_init -o "$W"/model.lora.onnx | tail -3
		rm -rf "$W"/run
		mp=$(mempoll "$W"/mem_loracc_train.txt)
		t0=$(now)
		"$BIN"/loracc train "$W"/model.lora.onnx --data "$W"/data.jsonl --loss lm \
			--logits logits --labels labels --max-steps "$STEPS" --batch-size "$BATCH" --lr 1e-4 --weight-decay 0 \
			--clip-norm 0 --device "$DEVICE" --save-every 0 --out "$W"/run >"$W"/train.log 2>&1
		echo "train_exit $? train_wall_s $(python3 -c "print($(now)-$t0)") (from-adapter)" | tee "$W"/train_wall.txt
		kill "$mp" 2>/dev/null
		grep -v '^\s*$' "$W"/train.log | tail -25
	fi
}

# lat NAME LABEL MODEL DEVICE BATCH SEQ N [OUTPUTS]: one latency line into NAME/latency.jsonl
lat() {
	local W=$WORK/$1 vocab
	vocab=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab'])" "$W"/torch_summary.json)
	local mp; mp=$(mempoll "$W"/mem_lat.txt)
	timeout 300 "$BIN"/latency -label "$2" -model "$3" -device "$4" -batch "$5" -seq "$6" -n "$7" -vocab "$vocab" \
		${8:+-outputs "$8"} >"$W"/lat.tmp 2>"$W"/lat.err
	local rc=$?
	kill "$mp" 2>/dev/null; sleep 0.2
	local peak; peak=$(sort -n "$W"/mem_lat.txt | tail -1)
	if [ $rc -eq 0 ]; then
		python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read()); d['gpu_mem_peak_mib']=int(sys.argv[2] or 0); print(json.dumps(d))" \
			"$W"/lat.tmp "$peak" | tee -a "$W"/latency.jsonl
	else
		echo "latency $2 failed ($rc): $(tail -3 "$W"/lat.err)" | tee -a "$W"/latency_errors.txt
	fi
}

pack() { # NAME: small result files to $OUT
	local W=$WORK/$1
	(cd "$WORK" && tar czf "$OUT"/results_"$1".tgz --exclude='*.onnx' --exclude='*.data' --exclude='data.jsonl' \
		--exclude='checkpoints' --exclude='*.safetensors' --exclude='graphs' "$1")
	python3 "$ROOT"/bench/gpu/summarize.py "$W" | tee "$OUT"/summary_"$1".txt
}

gpt2() {
	local W=$WORK/gpt2
	mkdir -p "$W"
	echo "== torch side (gpt2)"
	local mp; mp=$(mempoll "$W"/mem_torch.txt)
	timeout 360 python3 bench/gpu/torch_side.py --model gpt2 --dir "$W" --steps "$STEPS" --batch "$BATCH" --seq "$SEQ" 2>&1 | grep -v Warning | tee "$W"/torch.log
	kill "$mp" 2>/dev/null
	loracc_train gpt2
	echo "== fuse"
	"$BIN"/loracc fuse "$W"/model.lora.onnx --adapter "$W"/run/adapter -o "$W"/model.fused.onnx 2>&1 | tail -2
	echo "== latency"
	rm -f "$W"/latency.jsonl
	local G=$W/run/graphs
	lat gpt2 train_step_all "$G"/train.onnx cuda "$BATCH" "$SEQ" 20
	lat gpt2 train_step_loss_only "$G"/train.onnx cuda "$BATCH" "$SEQ" 20 loss
	lat gpt2 eval_forward_loss "$G"/eval.onnx cuda "$BATCH" "$SEQ" 20
	for m in base:model.onnx injected:model.lora.onnx fused:model.fused.onnx; do
		lat gpt2 "${m%%:*}" "$W/${m#*:}" cuda 1 128 50
		lat gpt2 "${m%%:*}" "$W/${m#*:}" cuda "$BATCH" "$SEQ" 20
		lat gpt2 "${m%%:*}" "$W/${m#*:}" cpu 1 128 20
	done
	pack gpt2
}

llama_torch() {
	local W=$WORK/llama1b
	mkdir -p "$W"
	local mp; mp=$(mempoll "$W"/mem_torch.txt)
	timeout 540 python3 bench/gpu/torch_side.py --model llama1b --dir "$W" --steps "$STEPS" --batch "$BATCH" --seq "$SEQ" 2>&1 | grep -v Warning | tee "$W"/torch.log
	kill "$mp" 2>/dev/null
	ls -la "$W"
	pack llama1b
}

llama_loracc() {
	local W=$WORK/llama1b
	loracc_train llama1b
	rm -f "$W"/latency.jsonl
	local G=$W/run/graphs
	lat llama1b train_step_all "$G"/train.onnx cuda "$BATCH" "$SEQ" 10
	lat llama1b train_step_loss_only "$G"/train.onnx cuda "$BATCH" "$SEQ" 10 loss
	lat llama1b eval_forward_loss "$G"/eval.onnx cuda "$BATCH" "$SEQ" 10
	pack llama1b
}

# prof NAME LABEL MODEL BATCH SEQ [OUTPUTS [VOCAB]]: ORT's per-node profile of MODEL (node placement,
# memcpys, time per op) through .gpu/bin/latency -profile, 3 runs after 2 warm-ups, fetching OUTPUTS
# (default: all). With SYNC=1 every CUDA launch is synchronous (CUDA_LAUNCH_BLOCKING), so a node's
# time in the profile is its kernels' GPU time plus one launch each, not just the host's launch time:
# where the GPU time of a step goes, node by node.
prof() {
	local W=$WORK/$1 vocab=${7:-}
	[ -n "$vocab" ] || vocab=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab'])" "$W"/torch_summary.json)
	(cd "$W" && rm -f prof_"$2"_*.json && ${SYNC:+env CUDA_LAUNCH_BLOCKING=1} timeout 400 "$BIN"/latency -model "$3" -device cuda \
		-batch "$4" -seq "$5" -vocab "$vocab" -n 3 -warmup 2 ${6:+-outputs "$6"} -profile prof_"$2" >/dev/null)
	python3 "$ROOT"/bench/gpu/profsum.py "$W"/prof_"$2"_*.json >"$W"/profsum_"$2".txt; head -40 "$W"/profsum_"$2".txt
	gzip -f "$W"/prof_"$2"_*.json
}

# gpt2-extra: what the first pass left open (run on a fresh machine: re-exports the model)
gpt2_extra() {
	local W=$WORK/gpt2
	mkdir -p "$W"
	[ -f "$W"/model.onnx ] || timeout 300 python3 bench/gpu/torch_side.py --model gpt2 --dir "$W" --modes none 2>&1 | grep -v Warning
	local re; re=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['loracc_target_regex'])" "$W"/torch_summary.json)
	[ -f "$W"/model.lora.onnx ] || "$BIN"/loracc inject "$W"/model.onnx --rank 16 --target "$re" -o "$W"/model.lora.onnx | tail -1
	local G=$W/graphs
	"$BIN"/loracc export-train "$W"/model.lora.onnx --loss lm --logits logits --labels labels --weight-decay 0 --clip-norm 0 -o "$G" | tail -1
	rm -f "$W"/latency.jsonl
	echo "== forward + loss without the logits copy (eval.onnx)"
	lat gpt2 eval_forward_loss "$G"/eval.onnx cuda 1 128 50
	lat gpt2 eval_forward_loss "$G"/eval.onnx cpu 1 128 20
	lat gpt2 injected "$W"/model.lora.onnx cuda 1 128 50
	echo "== train step memory vs batch"
	for b in 1 2 4 8; do lat gpt2 train_step_all "$G"/train.onnx cuda $b "$SEQ" 5; done
	echo "== ORT profiles"
	prof gpt2 train "$G"/train.onnx "$BATCH" "$SEQ" loss
	prof gpt2 eval "$G"/eval.onnx "$BATCH" "$SEQ" loss
	prof gpt2 fwd1x128 "$W"/model.lora.onnx 1 128
	(cd "$WORK" && tar czf "$OUT"/extra_gpt2.tgz gpt2/latency.jsonl gpt2/profsum_*.txt gpt2/prof_*.json.gz gpt2/*.log 2>/dev/null)
}

# train_kinds DIR KIND...: `loracc train` of DIR/model.lora.onnx from DIR/peft_init on DIR/data.jsonl, once per
# kind (dynamic; static: --static, CUDA graph; static_nograph; static_hoststate), with the median tokens/s of steps 9+
train_kinds() {
	local W=$1; shift
	for kind in "$@"; do
		local extra="" base=${kind/_nomp/} nomp=""
		[ "$base" != "$kind" ] && nomp="--mem-pattern off" # KIND_nomp: KIND with ORT's memory pattern off
		case $base in
		static) extra="--static --pad-to-multiple-of $SEQ" ;; # CUDA graph (auto)
		static_nograph) extra="--static --pad-to-multiple-of $SEQ --cuda-graph off" ;;
		static_hoststate) extra="--static --pad-to-multiple-of $SEQ --cuda-graph off --device-state off" ;;
		static_bf16) extra="--static --pad-to-multiple-of $SEQ --compute-dtype bf16" ;;
		static_fp16) extra="--static --pad-to-multiple-of $SEQ --compute-dtype fp16" ;;
		static_fp16_lowsoftmax) extra="--static --pad-to-multiple-of $SEQ --compute-dtype fp16 --disable-rewrite softmax-f32" ;; # BiasSoftmax in fp16
		static_recompute) extra="--static --pad-to-multiple-of $SEQ --recompute attention" ;;
		static_recompute_all) extra="--static --pad-to-multiple-of $SEQ --recompute attention,activations" ;;
		static_nomp) extra="--static --pad-to-multiple-of $SEQ --mem-pattern off" ;;
		static_bf16_recompute) extra="--static --pad-to-multiple-of $SEQ --compute-dtype bf16 --recompute attention" ;;
		static_bf16_recompute_all) extra="--static --pad-to-multiple-of $SEQ --compute-dtype bf16 --recompute attention,activations" ;;
		static_bf16_recompute_lowsoftmax) extra="--static --pad-to-multiple-of $SEQ --compute-dtype bf16 --recompute attention --disable-rewrite softmax-f32,bias-softmax" ;;
		static_fp16_recompute) extra="--static --pad-to-multiple-of $SEQ --compute-dtype fp16 --recompute attention" ;;
		static_recompute_loss) extra="--static --pad-to-multiple-of $SEQ --recompute attention,loss" ;;
		static_recompute_all_loss) extra="--static --pad-to-multiple-of $SEQ --recompute attention,activations,loss" ;;
		static_bf16_recompute_all_loss) extra="--static --pad-to-multiple-of $SEQ --compute-dtype bf16 --recompute attention,activations,loss" ;;
		static~*) # static~a+b: the static step with rewrites a and b left out (--disable-rewrite a,b)
			local off=${base#static~}
			extra="--static --pad-to-multiple-of $SEQ --disable-rewrite ${off//+/,}" ;;
		esac
		extra="$extra $nomp"
		rm -rf "$W"/run_$kind
		local mp; mp=$(mempoll "$W"/mem_train_$kind.txt)
		local t0=$(now)
		LORACC_ORT_LOG=${ORT_LOG:-} "$BIN"/loracc train "$W"/model.lora.onnx --adapter "$W"/peft_init --data "$W"/data.jsonl --loss lm \
			--logits logits --labels labels --max-steps "$STEPS" --batch-size "$BATCH" --lr 1e-4 --weight-decay 0 \
			--clip-norm 0 --device cuda --save-every 0 $extra --out "$W"/run_$kind >"$W"/train_$kind.log 2>&1
		local rc=$?
		grep -h -i "memcpy\|cuda graph\|cannot use" "$W"/train_$kind.log | sort | uniq -c | head -5
		echo "train_$kind exit $rc wall_s $(python3 -c "print($(now)-$t0)") peak_mib $(sort -n "$W"/mem_train_$kind.txt | tail -1)" | tee -a "$W"/train_wall.txt
		kill "$mp" 2>/dev/null
		local ref=$W/torch_tf32.json # 16-bit kinds compare with PyTorch's bf16 runs
		case $kind in *_bf16|*_fp16|*_bf16_*|*_fp16_*) ref=$W/torch_bf16w.json; [ -f "$ref" ] || ref=$W/torch_bf16.json ;; esac
		python3 - "$W"/run_$kind/metrics.csv "$ref" <<'PY' | tee -a "$W"/train_wall.txt
import csv, json, os, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
tps = [float(r["tokens_per_s"]) for r in rows[8:]]
print(f"{sys.argv[1]}: {len(rows)} steps, median tokens/s over steps 9+: {statistics.median(tps):.0f}, first loss {rows[0]['loss']}, last {rows[-1]['loss']}")
if os.path.exists(sys.argv[2]):
    ref = json.load(open(sys.argv[2]))
    t = ref["losses"]
    rel = [abs(float(r["loss"]) - t[i]) / abs(t[i]) for i, r in enumerate(rows[:len(t)])]
    print(f"  vs PyTorch {ref['mode']} ({ref['tokens_per_s']:.0f} tokens/s, {ref['max_memory_allocated_gib']:.2f} GiB allocated): {statistics.median(tps) / ref['tokens_per_s']:.3f}x; loss max relative difference over {len(rel)} steps {max(rel):.2e} (step {rel.index(max(rel)) + 1})")
PY
	done
}

# static: the static-shape step beside the dynamic one and PyTorch TF32, in one run
static() {
	local W=$WORK/gpt2s
	mkdir -p "$W"
	echo "== torch side (gpt2, tf32)"
	timeout 360 python3 bench/gpu/torch_side.py --model gpt2 --dir "$W" --steps "$STEPS" --batch "$BATCH" --seq "$SEQ" --modes tf32 2>&1 | grep -v Warning | tee "$W"/torch.log
	local re; re=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['loracc_target_regex'])" "$W"/torch_summary.json)
	"$BIN"/loracc inject "$W"/model.onnx --rank 16 --target "$re" -o "$W"/model.lora.onnx | tail -1
	rm -f "$W"/latency.jsonl
	for kind in dynamic static; do
		[ -n "${TRAIN_ONLY:-}" ] && break # TRAIN_ONLY=1: only the train runs below
		local G=$W/graphs_$kind extra=""
		[ $kind = static ] && extra="--static batch=$BATCH,seq=$SEQ"
		local t0=$(now)
		"$BIN"/loracc export-train "$W"/model.lora.onnx --loss lm --logits logits --labels labels --weight-decay 0 --clip-norm 0 $extra -o "$G" | tail -1
		echo "export_train_${kind}_s $(python3 -c "print($(now)-$t0)")"
		lat gpt2s train_loss_only_$kind "$G"/train.onnx cuda "$BATCH" "$SEQ" 20 loss
		lat gpt2s train_all_$kind "$G"/train.onnx cuda "$BATCH" "$SEQ" 20
		lat gpt2s eval_$kind "$G"/eval.onnx cuda "$BATCH" "$SEQ" 20
		local vocab; vocab=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab'])" "$W"/torch_summary.json)
		(cd "$W" && rm -f prof_${kind}_*.json && timeout 300 "$BIN"/latency -model "$G"/train.onnx -device cuda -batch "$BATCH" -seq "$SEQ" -vocab "$vocab" -n 3 -warmup 2 -outputs loss -profile prof_$kind >/dev/null)
		python3 "$ROOT"/bench/gpu/profsum.py "$W"/prof_${kind}_*.json >"$W"/profsum_$kind.txt; head -30 "$W"/profsum_$kind.txt
		gzip -f "$W"/prof_${kind}_*.json
	done
	train_kinds "$W" ${KINDS:-dynamic static static_nograph static_hoststate}
	(cd "$WORK" && tar czf "$OUT"/static_gpt2.tgz gpt2s/latency.jsonl gpt2s/profsum_*.txt gpt2s/torch_summary.json gpt2s/*.log gpt2s/train_wall.txt gpt2s/run_*/metrics.csv gpt2s/prof_*.json.gz 2>/dev/null)
	cat "$W"/latency.jsonl "$W"/train_wall.txt
}

# round MODEL (gpt2 or llama1b): PyTorch + PEFT (MODES, default fp32,tf32,bf16,compile) beside
# `loracc train --static` (KINDS, default static) in one run, then Nsight Compute's time of every
# kernel of one static step (NCU=0 skips it)
round() {
	local M=$1 W=$WORK/round_$1
	mkdir -p "$W"
	echo "== torch side ($M)"
	timeout 420 python3 bench/gpu/torch_side.py --model "$M" --dir "$W" --steps "$STEPS" --batch "$BATCH" --seq "$SEQ" \
		--modes "${MODES:-fp32,tf32,bf16,compile}" 2>&1 | grep -v Warning | tee "$W"/torch.log
	local re; re=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['loracc_target_regex'])" "$W"/torch_summary.json)
	"$BIN"/loracc inject "$W"/model.onnx --rank 16 --target "$re" -o "$W"/model.lora.onnx | tail -1
	train_kinds "$W" ${KINDS:-static}
	if [ "${NCU:-1}" != 0 ]; then
		local vocab; vocab=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab'])" "$W"/torch_summary.json)
		OUT=$W bash "$ROOT"/bench/gpu/kernels.sh "$W" "$vocab"
		if [ "${PROFILE:-0}" = 1 ]; then # ORT's profile of the static step: node placement (CPU nodes), host time
			(cd "$W" && rm -f prof_static_*.json && timeout 200 "$BIN"/latency -model "$W"/g/train.onnx -device cuda -batch "$BATCH" -seq "$SEQ" \
				-vocab "$vocab" -n 2 -warmup 1 -outputs loss -profile prof_static >/dev/null)
			python3 "$ROOT"/bench/gpu/profsum.py "$W"/prof_static_*.json >"$W"/profsum_static.txt; head -40 "$W"/profsum_static.txt
		fi
	fi
	if [ -n "${DIAG_MEMCPY:-}" ]; then # which values ORT copies between host and device in the default static step
		"$BIN"/loracc export-train "$W"/model.lora.onnx --loss lm --logits logits --labels labels --weight-decay 0 --clip-norm 0 \
			--static batch=$BATCH,seq=$SEQ --provider cuda -o "$W"/g_diag | tail -1
		LORACC_ORT_LOG=verbose timeout 200 "$BIN"/latency -model "$W"/g_diag/train.onnx -device cuda -batch "$BATCH" -seq "$SEQ" \
			-vocab 32000 -n 1 -warmup 0 -outputs loss 2>&1 | grep -i "memcpy" | grep -v "^$" | head -40 | cut -c1-400 | tee "$W"/diag_memcpy.txt
	fi
	grep -h "cuda graph" "$W"/train_*.log
	(cd "$WORK" && tar czf "$OUT"/round_$M.tgz round_$M/*.log round_$M/*.txt round_$M/torch_*.json round_$M/run_*/metrics.csv round_$M/run_*/memory.json 2>/dev/null)
	[ "${PROFILE:-0}" = 1 ] && cp "$W"/profsum_static.txt "$OUT"/profsum_$M.txt
	cp "$W"/kernels.txt "$OUT"/kernels_$M.txt 2>/dev/null
	cat "$W"/train_wall.txt
}

# variants MODEL: PyTorch + PEFT TF32 beside `loracc train --static` with each set of rewrites
# left out (KINDS, e.g. "static static~bias-softmax static~lora-concat+silu-rule"), ORT's warnings on
# (ORT_LOG=warning: Memcpy nodes, CUDA-graph refusals), then the op counts of each compiled step
variants() {
	local M=$1 W=$WORK/round_$1
	mkdir -p "$W"
	echo "== torch side ($M)"
	timeout 300 python3 bench/gpu/torch_side.py --model "$M" --dir "$W" --steps "$STEPS" --batch "$BATCH" --seq "$SEQ" \
		--modes "${MODES:-tf32}" 2>&1 | grep -v Warning | tail -3 | tee "$W"/torch.log
	local re; re=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['loracc_target_regex'])" "$W"/torch_summary.json)
	"$BIN"/loracc inject "$W"/model.onnx --rank 16 --target "$re" -o "$W"/model.lora.onnx | tail -1
	ORT_LOG=${ORT_LOG:-warning} train_kinds "$W" ${KINDS:-static}
	for g in "$W"/run_*/graphs/static-*/train.onnx; do
		python3 - "$g" <<'PY'
import collections, onnx, sys
m = onnx.load(sys.argv[1], load_external_data=False)
c = collections.Counter(n.op_type for n in m.graph.node)
print(sys.argv[1].split("/")[-4], sum(c.values()), "nodes;", ", ".join(f"{k} {c[k]}" for k in ["BiasSoftmax", "Softmax", "Sub", "Concat", "Split", "Mul", "Add", "MatMul"]))
PY
	done | tee "$W"/variants_ops.txt
	(cd "$WORK" && tar czf "$OUT"/variants_$M.tgz round_$M/*.log round_$M/*.txt round_$M/torch_*.json round_$M/run_*/metrics.csv round_$M/run_*/memory.json 2>/dev/null)
	cat "$W"/train_wall.txt
}

# llama-extra: re-export, then loracc train with only ~80 GB of the GPU free (an H100's size), and a profile
llama_extra() {
	local W=$WORK/llama1b
	mkdir -p "$W"
	[ -f "$W"/model.onnx ] || timeout 300 python3 bench/gpu/torch_side.py --model llama1b --dir "$W" --modes none 2>&1 | grep -v Warning
	local re; re=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['loracc_target_regex'])" "$W"/torch_summary.json)
	[ -f "$W"/model.lora.onnx ] || "$BIN"/loracc inject "$W"/model.onnx --rank 16 --target "$re" -o "$W"/model.lora.onnx | tail -1
	local total hold
	total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits)
	hold=$((total - ${FREE_MIB:-81559}))
	if [ "$hold" -gt 0 ]; then
		python3 -c "
import sys, time, torch
x = torch.empty(int(sys.argv[1]) * 2**20, dtype=torch.uint8, device='cuda')
open('/tmp/held', 'w').write('ok'); time.sleep(900)" "$hold" &
		local hp=$!
		while [ ! -f /tmp/held ]; do sleep 1; done
	fi
	echo "== GPU memory while holding $hold MiB: $(nvidia-smi --query-gpu=memory.used,memory.free --format=csv,noheader)"
	rm -rf "$W"/run_80g
	local mp; mp=$(mempoll "$W"/mem_loracc_train_80g.txt)
	local t0=$(now)
	"$BIN"/loracc train "$W"/model.lora.onnx --adapter "$W"/peft_init --data "$W"/data.jsonl --loss lm \
		--logits logits --labels labels --max-steps "${STEPS_80G:-20}" --batch-size "$BATCH" --lr 1e-4 --weight-decay 0 \
		--clip-norm 0 --device "$DEVICE" --save-every 0 --out "$W"/run_80g >"$W"/train_80g.log 2>&1
	echo "train_80g_exit $? wall_s $(python3 -c "print($(now)-$t0)") peak_used_mib $(sort -n "$W"/mem_loracc_train_80g.txt | tail -1)" | tee "$W"/train_80g.txt
	kill "$mp" 2>/dev/null
	grep -v '^step' "$W"/train_80g.log | tail -5
	[ -n "${hp:-}" ] && kill "$hp" && rm -f /tmp/held && sleep 2
	prof llama1b train "$W"/run_80g/graphs/train.onnx "$BATCH" "$SEQ" loss
	(cd "$WORK" && tar czf "$OUT"/extra_llama1b.tgz llama1b/train_80g.* llama1b/run_80g/metrics.csv llama1b/mem_loracc_train_80g.txt llama1b/profsum_*.txt llama1b/prof_*.json.gz 2>/dev/null)
}

# l7b: the memory issue's 7B run. PyTorch + PEFT (base in bf16, LoRA fp32, autocast; gradient
# checkpointing off, then on) beside `loracc train --static --compute-dtype bf16` of a Llama-2-7B-shaped
# model that .gpu/bin/llama (internal/testmodels/cmd/llama, built on the dev machine) writes here
# while PyTorch runs. Weights differ between the sides (random init on each); the tokens are the same.
# Kind words: fp16, recompute / recompute_all, loss (--recompute loss), nomp (memory pattern off), nograph (--cuda-graph off),
# lowsoftmax (the attention's Softmax in the compute dtype, --disable-rewrite softmax-f32), oldattn
# (--disable-rewrite softmax-bf16,softmax-cast,cast-row-sums,row-sub-fold: most of the attention's [B,H,T,T] traffic as
# before), f32softmax (--disable-rewrite softmax-bf16: the float32 softmax, bf16's default before round 9); a kind
# starting int4 trains the int4 base at opset 18 (its backward unpacks the codes in int32 ops),
# int4op21 the same base at opset 21 (one DequantizeLinear per weight).
# Kinds (KINDS7) containing int4 train the int4 base (llama -int4: every projection a 4-bit MatMulNBits,
# QLoRA-style) beside PyTorch's bf16 row. PROF7=KIND profiles that kind's step node by node after it
# trains (prof with SYNC=1: GPU time per node), results profsum_7b_KIND.txt.
l7b() {
	local W=$WORK/l7b B=${BATCH7:-4} S=${STEPS7:-20}
	rm -rf "$W"; mkdir -p "$W"
	df -h "$WORK" | tail -1
	( t0=$(now); "$BIN"/llama "$W"/model.onnx && echo "llama_gen_s $(python3 -c "print($(now)-$t0)")"
	  case " ${KINDS7:-bf16} " in *int4_*|*int4\ *) "$BIN"/llama -int4 "$W"/model_int4.onnx && echo "llama_int4_gen_s $(python3 -c "print($(now)-$t0)")" ;; esac
	  case " ${KINDS7:-bf16} " in *int4op21*) "$BIN"/llama -int4 -opset 21 "$W"/model_int4op21.onnx && echo "llama_int4op21_gen_s $(python3 -c "print($(now)-$t0)")" ;; esac
	) >"$W"/gen.log 2>&1 &
	local gen=$!
	echo "== PyTorch + PEFT, 7B, $B x $SEQ"
	timeout 400 python3 bench/gpu/torch_7b.py --dir "$W" --batch "$B" --seq "$SEQ" --steps "$S" --modes "${MODES7:-bf16w,bf16w_ckpt}" 2>&1 | grep -v Warning | tee "$W"/torch.log
	wait $gen; cat "$W"/gen.log; ls -la "$W"
	"$BIN"/loracc inject "$W"/model.onnx --rank 16 --target 'self_attn\.[qkvo]_proj$' -o "$W"/model.lora.onnx | tail -1
	l7b_kinds
}

# l7b-kinds: train KINDS7 on the models an earlier l7b left in $WORK/l7b (a warm machine), generating
# an int4 base a kind needs that is not there yet; PyTorch's row is the earlier run's.
l7b_kinds() {
	local W=$WORK/l7b B=${BATCH7:-4} S=${STEPS7:-20}
	case " ${KINDS7:-bf16} " in *int4op21*) [ -f "$W"/model_int4op21.onnx ] || "$BIN"/llama -int4 -opset 21 "$W"/model_int4op21.onnx 2>&1 | tail -1 ;; esac
	case " ${KINDS7:-bf16} " in *int4_*|*int4\ *) [ -f "$W"/model_int4.onnx ] || "$BIN"/llama -int4 "$W"/model_int4.onnx 2>&1 | tail -1 ;; esac
	for q in int4 int4op21; do
		[ -f "$W"/model_$q.onnx ] && [ ! -f "$W"/model_$q.lora.onnx ] && "$BIN"/loracc inject "$W"/model_$q.onnx --rank 16 --target 'self_attn\.[qkvo]_proj$' -o "$W"/model_$q.lora.onnx | tail -1
	done
	for kind in ${KINDS7:-bf16}; do
		local model=$W/model.lora.onnx
		case $kind in int4op21*) model=$W/model_int4op21.lora.onnx ;; int4*) model=$W/model_int4.lora.onnx ;; esac
		local dt=bf16; case $kind in fp16*) dt=fp16 ;; esac
		local extra="--static --pad-to-multiple-of $SEQ --compute-dtype $dt"
		local rec=""
		case $kind in *recompute_all*) rec=attention,activations ;; *recompute*) rec=attention ;; esac
		case $kind in *loss*) rec=${rec:+$rec,}loss ;; esac # the lm loss in chunks, recomputed (--recompute loss)
		[ -n "$rec" ] && extra="$extra --recompute $rec"
		case $kind in *nomp*) extra="$extra --mem-pattern off" ;; esac
		case $kind in *nograph*) extra="$extra --cuda-graph off" ;; esac
		# lowsoftmax: the attention's Softmax in the compute dtype; in bf16 without BiasSoftmax, which
		# has no bf16 kernel (trainstep.BF16Kernel) and would run in float32 between casts again
		local dis=""
		case $kind in *lowsoftmax*) [ $dt = bf16 ] && dis="softmax-f32,bias-softmax" || dis="softmax-f32" ;; esac
		# oldattn: without the sixth session's attention-traffic rewrites (the forward Softmax in
		# bf16, the row sums from the attention output under autocast), to A/B them
		case $kind in *oldattn*) dis=${dis:+$dis,}softmax-bf16,softmax-cast,cast-row-sums,row-sub-fold ;; esac
		# f32softmax: the attention's softmax in float32 under bf16 (the default before round 9)
		case $kind in *f32softmax*) dis=${dis:+$dis,}softmax-bf16 ;; esac
		# nbits: the int4 forward through MatMulNBits (before nbits-dequant)
		case $kind in *_nbits*) dis=${dis:+$dis,}nbits-dequant ;; esac
		[ -n "$dis" ] && extra="$extra --disable-rewrite $dis"
		rm -rf "$W"/run_$kind
		local mp; mp=$(mempoll "$W"/mem_train_$kind.txt)
		local t0=$(now)
		"$BIN"/loracc train "$model" --data "$W"/data.jsonl --loss lm --logits logits --labels labels \
			--max-steps "$S" --batch-size "$B" --lr 1e-4 --weight-decay 0 --clip-norm 0 --device cuda --save-every 0 \
			$extra --out "$W"/run_$kind >"$W"/train_$kind.log 2>&1
		local rc=$?
		kill "$mp" 2>/dev/null
		echo "train7b_$kind exit $rc wall_s $(python3 -c "print($(now)-$t0)") peak_used_mib $(sort -n "$W"/mem_train_$kind.txt | tail -1)" | tee -a "$W"/train_wall.txt
		grep -v '^step' "$W"/train_$kind.log | tail -6
		python3 - "$W"/run_$kind/metrics.csv "$W"/torch7b_bf16w.json <<'PY' | tee -a "$W"/train_wall.txt
import csv, json, os, statistics, sys
if not os.path.exists(sys.argv[1]):
    sys.exit(0)
rows = list(csv.DictReader(open(sys.argv[1])))
tps = [float(r["tokens_per_s"]) for r in rows[5:]]
print(f"{sys.argv[1]}: {len(rows)} steps, median tokens/s over steps 6+: {statistics.median(tps):.0f}, loss {rows[0]['loss']} -> {rows[-1]['loss']}")
if os.path.exists(sys.argv[2]):
    ref = json.load(open(sys.argv[2]))
    print(f"  vs PyTorch {ref['mode']} ({ref['tokens_per_s']:.0f} tokens/s, {ref['max_memory_allocated_gib']:.2f} GiB allocated, {ref['max_memory_reserved_gib']:.2f} reserved): {statistics.median(tps) / ref['tokens_per_s']:.3f}x")
PY
		cat "$W"/run_$kind/memory.json 2>/dev/null; echo
		mkdir -p "$W"/keep_$kind; cp "$W"/run_$kind/metrics.csv "$W"/run_$kind/memory.json "$W"/keep_$kind/ 2>/dev/null
		[ "${PROF7:-}" = "$kind" ] && SYNC=1 prof l7b 7b_$kind "$(ls "$W"/run_$kind/graphs/static-*/train.onnx | head -1)" "$B" "$SEQ" loss 32000
		rm -rf "$W"/run_$kind # each compile writes the weights in bf16 again (13 GB)
	done
	(cd "$WORK" && tar czf "$OUT"/l7b.tgz l7b/*.log l7b/*.txt l7b/torch7b_*.json l7b/keep_* l7b/profsum_* 2>/dev/null)
}

# memcurve MODEL: the memory issue's memory-vs-batch and -sequence points (acceptance 6). For each
# BATCHxSEQ of POINTS (default "2x512 4x512 8x512 4x256 4x1024") a fresh PyTorch + PEFT process
# (MEMMODE, default tf32; bf16w beside MEMFLAGS with --compute-dtype bf16) and `loracc train
# --static` (MEMFLAGS, default --recompute attention, the GPT-2 fp32 memory config of §3f) run
# MEMSTEPS steps (6) on the same data; one JSON line per side and point goes to
# $OUT/memcurve_MODEL.jsonl: alloc_gib (max_memory_allocated; loracc's arena MaxInUse) and
# device_gib (PyTorch's device used at the end; the peak nvidia-smi saw during loracc's run).
# Draw them on the dev machine: go run ./bench/gpu/memplot -o DIR memcurve_MODEL.jsonl.
memcurve() {
	local M=$1 W=$WORK/mem_$1 steps=${MEMSTEPS:-6} mode=${MEMMODE:-tf32} flags=${MEMFLAGS:---recompute attention}
	mkdir -p "$W"
	: >"$OUT"/memcurve_$M.jsonl
	local export_flag=""
	for pt in ${POINTS:-2x512 4x512 8x512 4x256 4x1024}; do
		local b=${pt%x*} s=${pt#*x}
		"$BIN"/order -n $((steps * b)) -seed 0 >"$W"/order.json
		timeout 400 python3 bench/gpu/torch_side.py --model "$M" --dir "$W" --steps "$steps" --batch "$b" --seq "$s" --warmup 2 \
			--modes "$mode" --order "$W"/order.json $export_flag 2>&1 | grep -v Warning | tail -1
		export_flag=--no-export
		python3 - "$W"/torch_$mode.json "$M" "$b" "$s" <<'PY' >>"$OUT"/memcurve_$M.jsonl
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({"model": sys.argv[2], "side": "pytorch", "batch": int(sys.argv[3]), "seq": int(sys.argv[4]), "mode": r["mode"],
                  "alloc_gib": r["max_memory_allocated_gib"], "reserved_gib": r["max_memory_reserved_gib"], "device_gib": r["device_used_at_end_gib"]}))
PY
		if [ ! -f "$W"/model.lora.onnx ]; then
			local re; re=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['loracc_target_regex'])" "$W"/torch_summary.json)
			"$BIN"/loracc inject "$W"/model.onnx --rank 16 --target "$re" -o "$W"/model.lora.onnx | tail -1
		fi
		rm -rf "$W"/run
		local mp; mp=$(mempoll "$W"/mem_loracc.txt)
		"$BIN"/loracc train "$W"/model.lora.onnx --data "$W"/data.jsonl --loss lm --logits logits --labels labels --max-steps "$steps" \
			--batch-size "$b" --lr 1e-4 --weight-decay 0 --clip-norm 0 --device cuda --save-every 0 --static --pad-to-multiple-of "$s" \
			$flags --out "$W"/run >"$W"/train_${b}x$s.log 2>&1
		echo "loracc ${b}x$s exit $?"
		kill "$mp" 2>/dev/null; sleep 0.3
		python3 - "$W"/run/memory.json "$M" "$b" "$s" "$(sort -n "$W"/mem_loracc.txt | tail -1)" "$flags" <<'PY' >>"$OUT"/memcurve_$M.jsonl
import json, sys
m = json.load(open(sys.argv[1]))
print(json.dumps({"model": sys.argv[2], "side": "loracc", "batch": int(sys.argv[3]), "seq": int(sys.argv[4]), "flags": sys.argv[6],
                  "alloc_gib": m["MaxInUse"] / 2**30, "reserved_gib": m["TotalAllocated"] / 2**30, "device_gib": int(sys.argv[5] or 0) / 1024}))
PY
	done
	cat "$OUT"/memcurve_$M.jsonl
}

# dqforms: the int4 weight's dequantization forms timed one product at a time (needs
# .gpu/bin/dqforms: go build -o .gpu/bin/dqforms ./bench/gpu/dqforms, and .gpu/bin/latency):
# median ms of Session.Run for each form at the 7B's two weight shapes, and the 7B step's
# forward products estimated as 32 layers × (4 attention + 3 MLP products).
dqforms() {
	local W=$WORK/dqforms
	rm -rf "$W"; mkdir -p "$W"
	"$BIN"/dqforms -o "$W" >/dev/null || return 1
	for f in "$W"/*.onnx; do
		timeout 120 "$BIN"/latency -model "$f" -device cuda -n 50 -warmup 5 2>&1 | tail -1
	done | tee "$OUT"/dqforms.jsonl
	python3 - "$OUT"/dqforms.jsonl <<'PY'
import json, os, sys
t = {}
for line in open(sys.argv[1]):
    try:
        d = json.loads(line)
    except ValueError:
        print("not a result:", line.strip()); continue
    form, shape = os.path.basename(d["model"])[:-5].rsplit("_", 1)
    t.setdefault(form, {})[shape] = d["median_ms"]
for form, v in t.items():
    est = 32 * (4 * v.get("4096x4096", float("nan")) + 3 * v.get("11008x4096", float("nan")))
    print(f"{form:10s} 4096x4096 {v.get('4096x4096', float('nan')):7.3f} ms  11008x4096 {v.get('11008x4096', float('nan')):7.3f} ms  7B forward products ~{est:6.1f} ms")
PY
}

case "${1:-}" in
tests) tests ;;
gpt2) gpt2 ;;
llama-torch) llama_torch ;;
llama-loracc) llama_loracc ;;
gpt2-extra) gpt2_extra ;;
llama-extra) llama_extra ;;
static) static ;;
round) round "${2:?round needs a model: gpt2 or llama1b}" ;;
variants) variants "${2:?variants needs a model}" ;;
l7b) l7b ;;
l7b-kinds) l7b_kinds ;;
memcurve) memcurve "${2:?memcurve needs a model: gpt2 or llama1b}" ;;
dqforms) dqforms ;;
*) echo "usage: $0 tests|gpt2|llama-torch|llama-loracc|gpt2-extra|llama-extra|static|round MODEL|variants MODEL|l7b|memcurve MODEL|dqforms" >&2; exit 2 ;;
esac
