#!/usr/bin/env bash
# Block IO: a `cairn dev` volume (through cairn-bench-block over its HTTP data routes) against
# Ceph RBD (fio ioengine=rbd on ../shared/peers/ceph.sh's image), in the same run.
#
# Usage: benches/block.sh DIR [SECONDS] [ROUNDS]
#
# Starts `cairn dev --data DIR/cairn` and a Ceph peer in DIR/ceph (3 BlueStore OSDs on sparse
# files, size 3 like Cairn's default pool), writes the first SPAN_MIB of each side's volume,
# then runs every workload on both sides ROUNDS times (default 3), SECONDS each (default 10)
# after RAMP seconds of warm-up, alternating the two systems (the side going first swaps every
# round). Prints one line per workload, medians over the rounds:
#   <workload> cairn=<v> ceph=<v> ratio=<cairn/ceph> cairn_p99_us=<v> ceph_p99_us=<v>
# 4k workloads report IOPS, 1m workloads MB/s; p99 is per-IO latency in µs (fio: clat).
# Per-run figures (with p50) go to stderr. When Ceph cannot be brought up (or CAIRN_BENCH_CEPH=0)
# its fields read n/a and Cairn is still measured. On exit both systems are stopped (by PID)
# and their data files deleted, logs kept (DIR/cairn.log, DIR/ceph/log).
#
# Knobs (environment): CAIRN_BENCH_RAMP (2), CAIRN_BENCH_SPAN_MIB (1024),
# CAIRN_BENCH_WORKLOADS (all five), CAIRN_BENCH_PORT (7290, cairn dev's admin/data port),
# CAIRN_BENCH_CEPH (1; 0 skips Ceph), CAIRN_BENCH_KEEP (0; 1 keeps data files),
# CAIRN_BENCH_BIN and CAIRN_BENCH_CAIRN (prebuilt cairn-bench-block and cairn; otherwise both are
# built in release mode), CEPH_PEER_OSD_GB (6 here; see ceph.sh for the other CEPH_PEER_* knobs).
set -euo pipefail

dir=${1:?usage: benches/block.sh DIR [SECONDS] [ROUNDS]}
seconds=${2:-10}
rounds=${3:-3}
ramp=${CAIRN_BENCH_RAMP:-2}
span_mib=${CAIRN_BENCH_SPAN_MIB:-1024}
workloads=${CAIRN_BENCH_WORKLOADS:-4k-randwrite-qd1 4k-randwrite-qd32 4k-randread-qd32 1m-seqwrite-qd8 1m-seqread-qd8}
port=${CAIRN_BENCH_PORT:-7290}
with_ceph=${CAIRN_BENCH_CEPH:-1}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ceph_sh=${CEPH_PEER_SCRIPT:-$here/../../shared/peers/ceph.sh}
[ -f "$ceph_sh" ] || ceph_sh=/work/shared/peers/ceph.sh
# Small OSD files: the benchmark writes SPAN_MIB three times over, and the disk is shared.
export CEPH_PEER_OSD_GB=${CEPH_PEER_OSD_GB:-6}
# No radosgw: only RBD is measured here.
export CEPH_PEER_RGW_PORT=${CEPH_PEER_RGW_PORT:-0}
# The image must hold the span.
export CEPH_PEER_RBD_GB=${CEPH_PEER_RBD_GB:-$(((span_mib + 1023) / 1024 + 1))}

# shellcheck source=../scripts/prerequisites.sh
source "$here/../scripts/prerequisites.sh"
# shellcheck source=workloads.sh
source "$here/workloads.sh"
cairn_ensure_prerequisites
command -v python3 >/dev/null || { echo "block.sh: python3 is needed to read fio's JSON" >&2; exit 2; }
log() { echo "# $*" >&2; }

bench=${CAIRN_BENCH_BIN:-}
cairn=${CAIRN_BENCH_CAIRN:-}
if [ -z "$bench" ] || [ -z "$cairn" ]; then
  cairn_ensure_rocksdb
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}
  log "building cairn and cairn-bench-block (release)"
  cargo build --quiet --release --manifest-path "$here/../Cargo.toml" -p cairn >&2
  cargo build --quiet --release --manifest-path "$here/../Cargo.toml" -p cairn-benches \
    --bin cairn-bench-block >&2
  bench=${bench:-$CARGO_TARGET_DIR/release/cairn-bench-block}
  cairn=${cairn:-$CARGO_TARGET_DIR/release/cairn}
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cairn_dir=$dir/cairn
ceph_dir=$dir/ceph
results=$(mktemp)
cairn_pid=""
ceph_started=0
failed_runs=0

cleanup() {
  local rc=$?
  if [ -n "$cairn_pid" ] && kill -0 "$cairn_pid" 2>/dev/null; then
    log "stopping cairn dev (pid $cairn_pid)"
    kill -TERM "$cairn_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$cairn_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$cairn_pid" 2>/dev/null || true
    wait "$cairn_pid" 2>/dev/null || true
  fi
  if [ "$ceph_started" = 1 ] && [ -f "$ceph_dir/pids" ]; then
    bash "$ceph_sh" down "$ceph_dir" >&2 || true
  fi
  if [ "${CAIRN_BENCH_KEEP:-0}" != 1 ]; then
    # The big files: Cairn's disks and log, Ceph's OSD block files and mon store.
    rm -rf "$cairn_dir" "$ceph_dir"/osd.* "$ceph_dir"/mon.a
  fi
  rm -f "$results"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free space on DIR's filesystem, in MiB.
free_mib() { df -Pm "$dir" | awk 'NR == 2 {print $4}'; }
# Cairn holds the span three times (replicas) plus its Raft logs; keep a margin for others.
need_mib=$((span_mib * 4 + 4096))
[ "$(free_mib)" -ge "$need_mib" ] || { echo "block.sh: need ${need_mib} MiB free in $dir" >&2; exit 2; }

# --- Ceph peer ------------------------------------------------------------------------------
ceph_up() {
  [ "$with_ceph" = 1 ] || { log "Ceph skipped (CAIRN_BENCH_CEPH=0)"; return 1; }
  [ -f "$ceph_sh" ] || { log "no $ceph_sh: Ceph skipped"; return 1; }
  # A cluster left by an interrupted run of this script: stop it and start afresh.
  if [ -f "$ceph_dir/ceph.conf" ]; then
    [ -f "$ceph_dir/pids" ] && bash "$ceph_sh" down "$ceph_dir" >&2 || true
    rm -rf "$ceph_dir"
  fi
  # Ceph's OSD files grow up to OSDS x OSD_GB; Cairn's need must still fit beside them.
  local ceph_mib=$((${CEPH_PEER_OSDS:-3} * CEPH_PEER_OSD_GB * 1024))
  if [ "$(free_mib)" -lt $((ceph_mib + need_mib)) ]; then
    log "only $(free_mib) MiB free, Ceph may take ${ceph_mib}: Ceph skipped"
    return 1
  fi
  ceph_started=1
  log "bringing up Ceph in $ceph_dir (about 90 s)"
  bash "$ceph_sh" up "$ceph_dir" >"$dir/ceph-up.log" 2>&1 || {
    log "Ceph did not come up (see $dir/ceph-up.log):"; tail -n 5 "$dir/ceph-up.log" >&2; return 1; }
  # shellcheck disable=SC1091
  source "$ceph_dir/env.sh"
}

rbd_args() {
  echo "--ioengine=rbd --clientname=$CEPH_CLIENT_NAME --pool=$CEPH_RBD_POOL"\
    "--rbdname=$CEPH_RBD_IMAGE --direct=1 --size=${span_mib}m"
}


run_ceph() {
  # shellcheck disable=SC2046
  fio --name=bench $(rbd_args) $(fio_shape "$1") --time_based=1 --runtime="$seconds" \
    --ramp_time="$ramp" --numjobs=1 --output-format=json | python3 -c '
import json, sys
job = json.load(sys.stdin)["jobs"][0]
side = job["write"] if job["write"]["io_bytes"] > 0 else job["read"]
pct = side["clat_ns"]["percentile"]
print("iops=%.0f mbps=%.1f p50_us=%.0f p99_us=%.0f" % (side["iops"], side["bw_bytes"] / 1e6,
      pct["50.000000"] / 1000, pct["99.000000"] / 1000))'
}

# --- Cairn ----------------------------------------------------------------------------------
cairn_up() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "block.sh: port $port is taken; set CAIRN_BENCH_PORT" >&2; exit 2
  fi
  rm -rf "$cairn_dir"
  log "starting cairn dev in $cairn_dir on 127.0.0.1:$port"
  "$cairn" dev --data "$cairn_dir" --listen "127.0.0.1:$port" --iscsi-listen 127.0.0.1:0 --s3-listen 127.0.0.1:0 >"$dir/cairn.log" 2>&1 &
  cairn_pid=$!
  # endpoints.env appears once the cluster serves.
  for _ in $(seq 1 1200); do
    [ -f "$cairn_dir/endpoints.env" ] && break
    kill -0 "$cairn_pid" 2>/dev/null || { tail -n 20 "$dir/cairn.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -f "$cairn_dir/endpoints.env" ] || { echo "block.sh: cairn dev not ready in 120 s" >&2; exit 1; }
  set -a
  # shellcheck disable=SC1091
  source "$cairn_dir/endpoints.env"
  set +a
}

run_cairn() {
  "$bench" run bench "$1" "$seconds" "$span_mib" "$ramp"
}

# One run of one side; a failed run is reported and left out of the medians.
measure() {
  local side=$1 workload=$2 round=$3 line
  if line=$("run_$side" "$workload"); then
    echo "round=$round $workload $side $line" >&2
    echo "$workload $side $line" >>"$results"
  else
    echo "round=$round $workload $side FAILED" >&2
    failed_runs=$((failed_runs + 1))
  fi
}

ceph_ok=0
if ceph_up; then ceph_ok=1; fi
cairn_up
"$bench" create bench "$span_mib" >&2
log "prefilling ${span_mib} MiB on each side"
"$bench" prefill bench "$span_mib" >&2
if [ "$ceph_ok" = 1 ]; then
  # shellcheck disable=SC2046
  if ! fio --name=prefill $(rbd_args) --rw=write --bs=1m --iodepth=8 --output=/dev/null >&2; then
    log "Ceph prefill failed: Ceph left out"; ceph_ok=0
  fi
fi

for round in $(seq 1 "$rounds"); do
  sides="cairn ceph"
  [ $((round % 2)) = 0 ] && sides="ceph cairn"
  for workload in $workloads; do
    for side in $sides; do
      [ "$side" = ceph ] && [ "$ceph_ok" != 1 ] && continue
      measure "$side" "$workload" "$round"
    done
  done
done

python3 - "$results" $workloads <<'PY'
import statistics, sys
path, workloads = sys.argv[1], sys.argv[2:]
figures = {}
for line in open(path):
    workload, side, *fields = line.split()
    values = dict(field.split("=", 1) for field in fields)
    key = "iops" if workload.startswith("4k") else "mbps"
    runs = figures.setdefault((workload, side), [])
    runs.append((float(values[key]), float(values["p99_us"])))
for workload in workloads:
    fmt = "%.0f" if workload.startswith("4k") else "%.1f"
    out = {}
    for side in ("cairn", "ceph"):
        runs = figures.get((workload, side))
        if runs:
            out[side] = statistics.median(r[0] for r in runs)
            out[side + "_p99"] = "%.0f" % statistics.median(r[1] for r in runs)
    cairn, ceph = out.get("cairn"), out.get("ceph")
    ratio = "%.2f" % (cairn / ceph) if cairn is not None and ceph else "n/a"
    show = lambda v: fmt % v if v is not None else "n/a"
    print(f"{workload} cairn={show(cairn)} ceph={show(ceph)} ratio={ratio}"
          f" cairn_p99_us={out.get('cairn_p99', 'n/a')} ceph_p99_us={out.get('ceph_p99', 'n/a')}")
PY
[ "$failed_runs" = 0 ] || { echo "block.sh: $failed_runs runs failed" >&2; exit 1; }
