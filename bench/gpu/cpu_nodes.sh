#!/usr/bin/env bash
# bench/gpu/cpu_nodes.sh: export the 1B Llama, compile its static step and list the nodes ORT places on the CPU
# (from an ORT profile of one run). Run from the repository root on the GPU machine after staging ORT.
set -u
source /root/ort/env.sh
W=/root/bench/p; mkdir -p $W
export HF_HUB_OFFLINE=1
timeout 150 python3 bench/gpu/torch_side.py --model llama1b --dir $W --modes none --steps 50 2>&1 | grep -v "torch.onnx\]\|Warning" | tail -2
re=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['loracc_target_regex'])" $W/torch_summary.json)
.gpu/bin/loracc inject $W/model.onnx --rank 16 --target "$re" -o $W/m.lora.onnx | tail -1
.gpu/bin/loracc export-train $W/m.lora.onnx --loss lm --logits logits --labels labels --weight-decay 0 --clip-norm 0 --static batch=8,seq=512 -o $W/g 2>&1 | tail -1
cd $W && timeout 120 /work/main/.gpu/bin/latency -model $W/g/train.onnx -device cuda -batch 8 -seq 512 -vocab 32000 -n 1 -warmup 0 -outputs loss -profile prof >/dev/null 2>$W/lat.err; tail -2 $W/lat.err
python3 - prof_*.json <<'PY'
import json,sys,glob
ev=json.load(open(sys.argv[1]))
cpu=[e for e in ev if e.get("cat")=="Node" and e.get("args",{}).get("provider","").startswith("CPU")]
seen=set()
for e in cpu:
    k=(e["args"].get("op_name"),e["name"])
    if k in seen: continue
    seen.add(k); print("CPU node:",k)
print(len(seen),"distinct CPU nodes")
PY
