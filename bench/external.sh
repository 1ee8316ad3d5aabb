#!/usr/bin/env bash
# Benchmark: inject and fuse on an external-data model of LAYERS×4·HIDDEN²
# bytes (default 2 × 1 GiB). Prints peak RSS, bytes written and fuse
# throughput beside a plain cp of the same bytes.
#
#   bench/external.sh [DIR] [LAYERS] [HIDDEN]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/loracc-bench-external}
layers=${2:-2}
hidden=${3:-16384}
mkdir -p "$dir"
go build -o "$dir/loracc" ./cmd/loracc
[ -f "$dir/model.onnx" ] || go run ./bench/genexternal -layers "$layers" -hidden "$hidden" -o "$dir/model.onnx"
rm -rf "$dir"/model.lora* "$dir"/model.fused* "$dir/copy.data"
data_bytes=$(stat -c %s "$dir/model.onnx.data")
echo "model: $dir/model.onnx, external data $(numfmt --to=iec "$data_bytes")"
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true

rss() { grep 'Maximum resident' "$1" | awk '{printf "%.0f MB", $6/1024}'; }
secs() { grep 'Elapsed (wall' "$1" | awk '{print $NF}'; }

/usr/bin/time -v "$dir/loracc" inject "$dir/model.onnx" --rank 8 >/dev/null 2>"$dir/inject.time"
written=$(du -cb "$dir/model.lora.onnx" "$dir/model.lora.adapter" | tail -1 | cut -f1)
echo "inject: peak RSS $(rss "$dir/inject.time"), wrote $(numfmt --to=iec "$written"), wall $(secs "$dir/inject.time")"

/usr/bin/time -v "$dir/loracc" fuse "$dir/model.lora.onnx" --adapter "$dir/model.lora.adapter" >/dev/null 2>"$dir/fuse.time"
fused_bytes=$(stat -c %s "$dir/model.lora.fused.onnx.data")
echo "fuse:   peak RSS $(rss "$dir/fuse.time"), wrote $(numfmt --to=iec "$fused_bytes") of fused weights, wall $(secs "$dir/fuse.time")"

/usr/bin/time -v cp "$dir/model.onnx.data" "$dir/copy.data" 2>"$dir/cp.time"
echo "cp:     wall $(secs "$dir/cp.time") for the same $(numfmt --to=iec "$data_bytes")"
python3 - "$dir" "$data_bytes" <<'PY'
import sys
d, n = sys.argv[1], int(sys.argv[2])
def wall(f):
    for line in open(f):
        if "Elapsed (wall" in line:
            t = line.split()[-1].split(":")
            return sum(float(x) * 60 ** i for i, x in enumerate(reversed(t)))
fuse, cp = wall(d + "/fuse.time"), wall(d + "/cp.time")
print(f"fuse throughput {n / fuse / 1e9:.2f} GB/s, cp {n / cp / 1e9:.2f} GB/s")
PY
rm -f "$dir/copy.data"
