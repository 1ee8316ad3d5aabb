#!/usr/bin/env bash
# Prepares what testdata/torch/check_peft_interop.py checks on the GPU
# machine (PEFT out, ORT multi-LoRA) in .gpu/peftcheck, with loracc:
#   - gpt/: the tiny GPT-2 fine-tuned by `loracc demo-gpt` (adapter + fused model)
#   - bertrun/: the tiny BERT trained 40 steps with ce on random labels (adapter + fused)
#   - ml.onnx: the tiny GPT-2 injected with --adapter-inputs, adapter{1,2}.onnx_adapter
#     (two trained adapters exported for it) and fused{1,2}.onnx
#   - genai/: the tiny onnxruntime-genai-form Llama (packed qkv_proj) with
#     genai/multi.onnx injected with --adapter-inputs (onnxruntime-genai's
#     names), genai{1,2}.onnx_adapter and genai_fused{1,2}/ (its folder fused)
# Then, on the GPU machine (device run, carrying .gpu/peftcheck):
#   python3 testdata/torch/check_peft_interop.py .gpu/peftcheck $OUT/peft_interop.json
# The result is kept in testdata/ref/peft_interop.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
go build -o bin/loracc ./cmd/loracc
L=$PWD/bin/loracc
M=$PWD/testdata/models
d=.gpu/peftcheck
rm -rf "$d" && mkdir -p "$d" && cd "$d"
cp "$M/gpt2_tiny.onnx" "$M/bert_tiny.onnx" .
$L demo-gpt --model "$M/gpt2_tiny.onnx" --dir gpt --steps 300 >/dev/null
$L demo-gpt --model "$M/gpt2_tiny.onnx" --dir gpt2 --steps 60 >/dev/null
$L inject bert_tiny.onnx --rank 4 --alpha 8 --exclude classifier --seed 3 >/dev/null
python3 - <<'PY'
import json, random
random.seed(1)
with open("bert.jsonl", "w") as f:
    for _ in range(64):
        n = random.randint(4, 8)
        f.write(json.dumps({"input_ids": [random.randrange(256) for _ in range(8)],
                            "attention_mask": [1] * n + [0] * (8 - n), "labels": random.randrange(3)}) + "\n")
PY
$L train bert_tiny.lora.onnx --data bert.jsonl --loss ce --logits logits --labels labels --max-steps 40 --lr 5e-3 --device cpu --fuse --out bertrun >/dev/null 2>&1
$L inject gpt2_tiny.onnx --rank 8 --alpha 16 --adapter-inputs -o ml.onnx >/dev/null
cp -r gpt/run/adapter adapter1
cp -r gpt2/run/adapter adapter2
for k in 1 2; do
	$L export-adapter adapter$k --model ml.onnx -o adapter$k.onnx_adapter
	$L fuse gpt2_tiny.onnx --adapter adapter$k -o fused$k.onnx >/dev/null 2>&1
done
go run ../../internal/testmodels/cmd/genai-folder -packed genai
python3 - <<'PY'
import json, random
random.seed(2)
with open("genai.jsonl", "w") as f:
    for _ in range(16):
        ids = [random.randrange(96) for _ in range(12)]
        f.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")
PY
for k in 1 2; do
	$L inject genai --rank 4 --alpha 8 --target 'attn\.[qkvo]_proj$' --seed $k -o genai_a$k.onnx >/dev/null
	$L train genai_a$k.onnx --data genai.jsonl --loss lm --logits logits --max-steps 10 --batch-size 4 --lr 1e-2 --device cpu --save-every 0 --out genai_run$k >/dev/null 2>&1
	cp -r genai_run$k/adapter genai_ad$k
	rm -rf genai_a$k.onnx genai_a$k.onnx*.data genai_a$k.adapter genai_run$k
done
$L inject genai --from-adapter genai_ad1 --adapter-inputs -o genai/multi.onnx >/dev/null
for k in 1 2; do
	$L export-adapter genai_ad$k --model genai/multi.onnx -o genai$k.onnx_adapter
	$L fuse genai --adapter genai_ad$k -o genai_fused$k >/dev/null 2>&1
done
rm -rf gpt/run/checkpoints gpt/run/graphs gpt2 gpt/*.jsonl bertrun/checkpoints bertrun/graphs
