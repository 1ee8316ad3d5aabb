#!/usr/bin/env bash
# Prepares what testdata/torch/check_peft_interop.py checks on the GPU
# machine (PEFT out, ORT multi-LoRA) in .gpu/peftcheck, with loracc:
#   - gpt/: the tiny GPT-2 fine-tuned by `loracc demo-gpt` (adapter + fused model)
#   - bertrun/: the tiny BERT trained 40 steps with ce on random labels (adapter + fused)
#   - ml.onnx: the tiny GPT-2 injected with --adapter-inputs, adapter{1,2}.onnx_adapter
#     (two trained adapters exported for it) and fused{1,2}.onnx
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
rm -rf gpt/run/checkpoints gpt/run/graphs gpt2 gpt/*.jsonl bertrun/checkpoints bertrun/graphs
