#!/bin/sh
# Compares wisp-nbd's FileDevice server with nbdkit's file plugin using fio's
# NBD engine (libnbd): 4k random write/read at queue depth 16, 1M sequential
# write/read. Prints bandwidth per job and the wisp/nbdkit ratio.
# fio prints a 'connected' line before its JSON, hence the sed.
# Usage: crates/nbd/scripts/bench.sh [RUNTIME_SECONDS]   (needs fio, nbdkit)
set -eu
runtime=${1:-10}
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$(dirname "$0")/../../.."
cargo build -q --release -p wisp-nbd --example serve_file
bin=${CARGO_TARGET_DIR:-target}/release/examples/serve_file
truncate -s 1G "$dir/disk.img"

job() { # name rw bs
    fio --name="$1" --ioengine=nbd --uri="nbd+unix:///?socket=$dir/sock" --rw="$2" --bs="$3" \
        --iodepth=16 --size=1G --time_based --runtime="$runtime" --output-format=json 2>/dev/null |
        sed -n '/^{/,$p' | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(int((j["read"]["bw"]+j["write"]["bw"])/1024))'
}

run_all() {
    for spec in "randwrite 4k" "randread 4k" "write 1M" "read 1M"; do
        set -- $spec
        echo "$1-$2 $(job "$1" "$1" "$2")"
    done
}

start_wisp() { "$bin" "$dir/disk.img" "unix:$dir/sock" & pid=$!; }
start_nbdkit() { nbdkit --foreground file "$dir/disk.img" --unix "$dir/sock" & pid=$!; }
wait_sock() { i=0; while [ ! -S "$dir/sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; }

start_nbdkit; wait_sock; run_all > "$dir/nbdkit"; kill $pid; wait $pid 2>/dev/null || true; rm -f "$dir/sock"
start_wisp; wait_sock; run_all > "$dir/wisp"; kill $pid; wait $pid 2>/dev/null || true

echo "job            nbdkit MiB/s   wisp MiB/s   ratio"
join "$dir/nbdkit" "$dir/wisp" | while read -r name a b; do
    printf '%-14s %12s %12s   %s\n' "$name" "$a" "$b" "$(python3 -c "print(round($b/$a, 2))")"
done
