#!/bin/sh
# Compares wisp-nbd's FileDevice server with nbdkit's file plugin using fio's
# NBD engine (libnbd): 4k random write/read at queue depth 16, 1M sequential
# write/read. Prints bandwidth per job and the wisp/nbdkit ratio.
# fio prints a 'connected' line before its JSON, hence the sed.
# Usage: crates/nbd/scripts/bench.sh [RUNTIME_SECONDS]   (needs fio, nbdkit)
set -eu
runtime=${1:-10}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$(dirname "$0")/../../.."
cargo build -q --release -p wisp-nbd --example serve_file
bin=${CARGO_TARGET_DIR:-target}/release/examples/serve_file
truncate -s 1G "$dir/disk.img"

job() { # socket rw bs
    fio --name=bench --ioengine=nbd --uri="nbd+unix:///?socket=$1" --rw="$2" --bs="$3" \
        --iodepth=16 --size=1G --time_based --runtime="$runtime" --output-format=json 2>/dev/null |
        sed -n '/^{/,$p' | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(int((j["read"]["bw"]+j["write"]["bw"])/1024))'
}

# Both servers run at once, serving the same file (jobs run one at a time):
# the page cache and ext4's state of that file then favour neither, which
# separate files did (a 3x difference in 4k random writes). Each job
# alternates between them (nbdkit, wisp, nbdkit, wisp) so load from other
# processes hits both alike. Reported: the mean of the two runs of each.
"$bin" "$dir/disk.img" "unix:$dir/wisp.sock" & pid=$!
nbdkit --foreground file "$dir/disk.img" --unix "$dir/nbdkit.sock" & pid2=$!
trap 'kill $pid $pid2 2>/dev/null || true; rm -rf "$dir"' EXIT
i=0; while { [ ! -S "$dir/wisp.sock" ] || [ ! -S "$dir/nbdkit.sock" ]; } && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done

echo "job            nbdkit MiB/s   wisp MiB/s   ratio"
for spec in "randwrite 4k" "randread 4k" "write 1M" "read 1M"; do
    set -- $spec
    a1=$(job "$dir/nbdkit.sock" "$1" "$2"); b1=$(job "$dir/wisp.sock" "$1" "$2")
    a2=$(job "$dir/nbdkit.sock" "$1" "$2"); b2=$(job "$dir/wisp.sock" "$1" "$2")
    python3 -c "a=($a1+$a2)/2; b=($b1+$b2)/2; print('%-14s %12d %12d   %.2f' % ('$1-$2', a, b, b/a))"
done
