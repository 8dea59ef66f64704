#!/usr/bin/env bash
# Chunk store vs fio on the same directory.
#
# Usage: benches/chunkstore.sh DIR
#
# Runs Cairn's chunk store (through cairn-bench-chunkstore) and fio (ioengine=io_uring,
# direct=1) on DIR, alternating, ROUNDS rounds each, and prints one line per workload:
#   <workload> cairn=<median IOPS or MB/s> fio=<median> ratio=<cairn/fio>
# 4k workloads report IOPS, 1m workloads MB/s. Per-run figures (with p50/p99 latency) go to
# stderr. Both sides use a data set of SIZE_MIB written in full beforehand, a warm-up of
# RAMP seconds and then SECONDS of measurement.
#
# Knobs (environment): CAIRN_BENCH_ROUNDS (3), CAIRN_BENCH_SECONDS (5), CAIRN_BENCH_RAMP (1),
# CAIRN_BENCH_SIZE_MIB (1024), CAIRN_BENCH_WORKLOADS (all six), CAIRN_BENCH_BIN (a prebuilt
# cairn-bench-chunkstore; otherwise it is built in release mode).
set -euo pipefail

dir=${1:?usage: benches/chunkstore.sh DIR}
rounds=${CAIRN_BENCH_ROUNDS:-3}
seconds=${CAIRN_BENCH_SECONDS:-5}
ramp=${CAIRN_BENCH_RAMP:-1}
size_mib=${CAIRN_BENCH_SIZE_MIB:-1024}
workloads=${CAIRN_BENCH_WORKLOADS:-4k-randread-qd1 4k-randread-qd32 4k-randwrite-qd1 4k-randwrite-qd32 1m-seqread-qd8 1m-seqwrite-qd8}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source=../scripts/prerequisites.sh
source "$here/../scripts/prerequisites.sh"
# shellcheck source=workloads.sh
source "$here/workloads.sh"
cairn_ensure_prerequisites
command -v python3 >/dev/null || { echo "chunkstore.sh: python3 is needed to read fio's JSON" >&2; exit 2; }

bin=${CAIRN_BENCH_BIN:-}
if [ -z "$bin" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}
  cargo build --quiet --release --manifest-path "$here/../Cargo.toml" -p cairn-benches --bin cairn-bench-chunkstore >&2
  bin=$CARGO_TARGET_DIR/release/cairn-bench-chunkstore
fi

mkdir -p "$dir"
store=$dir/cairn-bench-store
fio_file=$dir/fio-bench.dat
results=$(mktemp)
trap 'rm -f "$results"' EXIT

echo "# preparing ${size_mib} MiB for each side in $dir" >&2
"$bin" prepare "$store" "$size_mib" >&2
fio --name=prepare --filename="$fio_file" --size="${size_mib}m" --rw=write --bs=1m \
  --direct=1 --ioengine=io_uring --output=/dev/null


run_fio() {
  # shellcheck disable=SC2046
  fio --name=bench --filename="$fio_file" --size="${size_mib}m" $(fio_shape "$1") \
    --direct=1 --ioengine=io_uring --time_based --runtime="$seconds" --ramp_time="$ramp" \
    --output-format=json | python3 -c '
import json, sys
job = json.load(sys.stdin)["jobs"][0]
side = job["write"] if job["write"]["io_bytes"] > 0 else job["read"]
pct = side["clat_ns"]["percentile"]
print("iops=%.0f mbps=%.1f p50_us=%.0f p99_us=%.0f" % (side["iops"], side["bw_bytes"] / 1e6,
      pct["50.000000"] / 1000, pct["99.000000"] / 1000))'
}

for round in $(seq 1 "$rounds"); do
  for workload in $workloads; do
    cairn=$("$bin" run "$store" "$workload" "$seconds" "$ramp")
    echo "round=$round $workload cairn $cairn" >&2
    echo "$workload cairn $cairn" >>"$results"
    fio_line=$(run_fio "$workload")
    echo "round=$round $workload fio $fio_line" >&2
    echo "$workload fio $fio_line" >>"$results"
  done
done

python3 - "$results" $workloads <<'PY'
import statistics, sys
path, workloads = sys.argv[1], sys.argv[2:]
figures = {}
for line in open(path):
    workload, side, *fields = line.split()
    values = dict(field.split("=") for field in fields)
    key = "iops" if workload.startswith("4k") else "mbps"
    figures.setdefault((workload, side), []).append(float(values[key]))
for workload in workloads:
    cairn = statistics.median(figures[(workload, "cairn")])
    fio = statistics.median(figures[(workload, "fio")])
    ratio = cairn / fio if fio > 0 else 0.0
    fmt = "%.0f" if workload.startswith("4k") else "%.1f"
    print(f"{workload} cairn={fmt % cairn} fio={fmt % fio} ratio={ratio:.2f}")
PY
