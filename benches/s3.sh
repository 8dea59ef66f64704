#!/usr/bin/env bash
# S3: Cairn's S3 gateway (`cairn dev`) against Ceph's radosgw (../shared/peers/ceph.sh), both
# driven by the same load generator (cairn-bench-s3: HTTP/1.1 keep-alive, SigV4 header auth with
# UNSIGNED-PAYLOAD, path-style URLs), in the same run.
#
# Usage: benches/s3.sh DIR [SECONDS] [ROUNDS]
#
# Starts `cairn dev --data DIR/cairn` and a Ceph peer with radosgw in DIR/ceph (3 BlueStore OSDs
# on sparse files, size 3 like Cairn's default pool), creates bucket `bench` on each and the
# objects GETs read (1024 x 4 KiB, 4 x 64 MiB), then runs every workload on both sides ROUNDS
# times (default 3), SECONDS each (default 10; 4 KiB workloads after RAMP seconds of warm-up),
# alternating the two systems (the side going first swaps every round). Prints one line per
# workload, medians over the rounds:
#   4k-...  <workload> cairn=<objects/s> rgw=<objects/s> ratio=<cairn/rgw> cairn_p99_us=<v> rgw_p99_us=<v>
#   64m-... <workload> cairn=<MB/s> rgw=<MB/s> ratio=<cairn/rgw>
# Workloads are `<size>-<put|get>-c<clients>`: N clients are N connections with one request
# in flight each. PUTs overwrite a few keys per client (128 of 4 KiB: more live inline objects
# make Cairn's metadata snapshot outgrow its 64 MiB log record, see cairn-bench-s3; 2 of 64 MiB),
# and 64 MiB PUT runs stop after PUT_MIB_MAX MiB (or SECONDS, whichever comes first): Cairn frees
# replaced objects only after 10 minutes, so unbounded runs would fill the disk. Per-run figures (JSON,
# with p50) go to stderr. Objects up to 16 KiB are stored inline in Cairn's metadata service,
# so 4 KiB figures measure that path and 64 MiB ones the chunk path.
#
# When Ceph cannot be brought up (or CAIRN_BENCH_CEPH=0) its fields read `-` and Cairn is
# still measured. On exit both systems are stopped (by PID) and their data files deleted, logs
# kept (DIR/cairn.log, DIR/ceph/log, DIR/ceph-up.log).
#
# Knobs (environment): CAIRN_BENCH_RAMP (2), CAIRN_BENCH_WORKLOADS (all six),
# CAIRN_BENCH_S3_PUT_MIB_MAX (512), CAIRN_BENCH_PORT (7294, cairn dev's admin/data port; its S3
# and iSCSI listeners take any free port), CAIRN_BENCH_CEPH (1; 0 skips Ceph),
# CAIRN_BENCH_KEEP (0; 1 keeps data files), CAIRN_BENCH_S3_SMOKE (0; 1 runs one round of 2 s
# against Cairn only, a quick check that the pieces work), CAIRN_BENCH_S3 and CAIRN_BENCH_CAIRN
# (prebuilt cairn-bench-s3 and cairn; otherwise both are built in release mode),
# CEPH_PEER_OSD_GB (5 here), CEPH_PEER_RGW_PORT (7480; see ceph.sh for the other knobs).
set -euo pipefail

dir=${1:?usage: benches/s3.sh DIR [SECONDS] [ROUNDS]}
seconds=${2:-10}
rounds=${3:-3}
with_ceph=${CAIRN_BENCH_CEPH:-1}
if [ "${CAIRN_BENCH_S3_SMOKE:-0}" = 1 ]; then
  seconds=2 rounds=1 with_ceph=0
fi
ramp=${CAIRN_BENCH_RAMP:-2}
workloads=${CAIRN_BENCH_WORKLOADS:-4k-put-c1 4k-get-c1 4k-put-c16 4k-get-c16 64m-put-c4 64m-get-c4}
put_mib_max=${CAIRN_BENCH_S3_PUT_MIB_MAX:-512}
port=${CAIRN_BENCH_PORT:-7294}
bucket=bench
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ceph_sh=${CEPH_PEER_SCRIPT:-$here/../../shared/peers/ceph.sh}
[ -f "$ceph_sh" ] || ceph_sh=/work/shared/peers/ceph.sh
# Each OSD holds a full replica: the GET objects (256 MiB), 64 MiB PUTs' live (512 MiB) and
# replaced objects (radosgw frees those after 1-2 minutes, up to PUT_MIB_MAX meanwhile) and
# BlueStore's own overhead: about 2.5 GiB at most, in sparse files on a shared disk.
export CEPH_PEER_OSD_GB=${CEPH_PEER_OSD_GB:-5}
export CEPH_PEER_RGW_PORT=${CEPH_PEER_RGW_PORT:-7480}
# Only radosgw is measured: the smallest RBD image.
export CEPH_PEER_RBD_GB=${CEPH_PEER_RBD_GB:-1}

# shellcheck source=../scripts/prerequisites.sh
source "$here/../scripts/prerequisites.sh"
cairn_ensure_prerequisites
command -v python3 >/dev/null || { echo "s3.sh: python3 is needed to read the JSON lines" >&2; exit 2; }
log() { echo "# $*" >&2; }

bench=${CAIRN_BENCH_S3:-}
cairn=${CAIRN_BENCH_CAIRN:-}
if [ -z "$bench" ] || [ -z "$cairn" ]; then
  cairn_ensure_rocksdb
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}
  log "building cairn and cairn-bench-s3 (release)"
  cargo build --quiet --release --manifest-path "$here/../Cargo.toml" -p cairn -p cairn-benches \
    --bin cairn --bin cairn-bench-s3 >&2
  bench=${bench:-$CARGO_TARGET_DIR/release/cairn-bench-s3}
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
    # The big files: Cairn's disks and Raft logs, Ceph's OSD block files and mon store.
    rm -rf "$cairn_dir" "$ceph_dir"/osd.* "$ceph_dir"/mon.a
  fi
  rm -f "$results"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free space on DIR's filesystem, in MiB.
free_mib() { df -Pm "$dir" | awk 'NR == 2 {print $4}'; }
# Cairn keeps every byte written for the whole run (3 replicas, each also in its PG's Raft log;
# replaced objects are freed after 10 minutes): the GET objects plus one capped 64 MiB PUT run
# per round, then a margin.
need_mib=$(((256 + put_mib_max * rounds) * 6 + 2048))
[ "$(free_mib)" -ge "$need_mib" ] || { echo "s3.sh: need ${need_mib} MiB free in $dir" >&2; exit 2; }

# --- Ceph peer (radosgw) ---------------------------------------------------------------------
rgw_endpoint="" rgw_access="" rgw_secret="" rgw_region=""
ceph_up() {
  [ "$with_ceph" = 1 ] || { log "Ceph skipped (CAIRN_BENCH_CEPH=0 or smoke mode)"; return 1; }
  [ -f "$ceph_sh" ] || { log "no $ceph_sh: Ceph skipped"; return 1; }
  # A cluster left by an interrupted run of this script: stop it and start afresh.
  if [ -f "$ceph_dir/ceph.conf" ]; then
    [ -f "$ceph_dir/pids" ] && bash "$ceph_sh" down "$ceph_dir" >&2 || true
    rm -rf "$ceph_dir"
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$CEPH_PEER_RGW_PORT") 2>/dev/null; then
    log "port $CEPH_PEER_RGW_PORT is taken (another radosgw?): Ceph skipped"; return 1
  fi
  # Ceph's sparse OSD files grow to what each holds (see CEPH_PEER_OSD_GB above), not to
  # OSD_GB; Cairn's need must still fit beside them.
  local ceph_mib=$((${CEPH_PEER_OSDS:-3} * (256 + 512 + put_mib_max + 1024)))
  if [ "$(free_mib)" -lt $((ceph_mib + need_mib)) ]; then
    log "only $(free_mib) MiB free, Ceph may take ${ceph_mib}: Ceph skipped"
    return 1
  fi
  ceph_started=1
  log "bringing up Ceph with radosgw in $ceph_dir (about a minute)"
  bash "$ceph_sh" up "$ceph_dir" >"$dir/ceph-up.log" 2>&1 || {
    log "Ceph did not come up (see $dir/ceph-up.log):"; tail -n 5 "$dir/ceph-up.log" >&2; return 1; }
  # Sourced in a subshell: its S3_ENDPOINT would clash with Cairn's, so only the four values
  # the load generator needs are kept, under names of their own.
  local values
  # shellcheck disable=SC1091
  values=$(source "$ceph_dir/env.sh" >/dev/null &&
    printf '%s\n' "${S3_ENDPOINT:-}" "${AWS_ACCESS_KEY_ID:-}" "${AWS_SECRET_ACCESS_KEY:-}" \
      "${AWS_DEFAULT_REGION:-us-east-1}")
  { read -r rgw_endpoint; read -r rgw_access; read -r rgw_secret; read -r rgw_region; } <<<"$values"
  [ -n "$rgw_endpoint" ] && [ -n "$rgw_access" ] || {
    log "$ceph_dir/env.sh has no S3 endpoint or key: Ceph left out"; return 1; }
  log "radosgw serves S3 at $rgw_endpoint"
}

run_rgw() {
  S3_ENDPOINT=$rgw_endpoint S3_ACCESS_KEY=$rgw_access S3_SECRET_KEY=$rgw_secret \
    S3_REGION=$rgw_region S3_BENCH_PUT_BYTES_MAX=$((put_mib_max << 20)) "$bench" "$@"
}

# --- Cairn ----------------------------------------------------------------------------------
cairn_endpoint="" cairn_access="" cairn_secret="" cairn_region=""
cairn_up() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "s3.sh: port $port is taken; set CAIRN_BENCH_PORT" >&2; exit 2
  fi
  rm -rf "$cairn_dir"
  log "starting cairn dev in $cairn_dir on 127.0.0.1:$port"
  "$cairn" dev --data "$cairn_dir" --listen "127.0.0.1:$port" --iscsi-listen 127.0.0.1:0 \
    --s3-listen 127.0.0.1:0 >"$dir/cairn.log" 2>&1 &
  cairn_pid=$!
  # endpoints.env appears once the cluster serves.
  for _ in $(seq 1 1200); do
    [ -f "$cairn_dir/endpoints.env" ] && break
    kill -0 "$cairn_pid" 2>/dev/null || { tail -n 20 "$dir/cairn.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -f "$cairn_dir/endpoints.env" ] || { echo "s3.sh: cairn dev not ready in 120 s" >&2; exit 1; }
  # Read, not sourced: Ceph's env.sh uses the same S3_* names.
  value() { sed -n "s/^$1=//p" "$cairn_dir/endpoints.env" | tail -n 1; }
  cairn_endpoint=$(value S3_ENDPOINT)
  cairn_access=$(value S3_ACCESS_KEY)
  cairn_secret=$(value S3_SECRET_KEY)
  cairn_region=$(value S3_REGION)
  log "cairn serves S3 at $cairn_endpoint"
}

run_cairn() {
  S3_ENDPOINT=$cairn_endpoint S3_ACCESS_KEY=$cairn_access S3_SECRET_KEY=$cairn_secret \
    S3_REGION=$cairn_region S3_BENCH_PUT_BYTES_MAX=$((put_mib_max << 20)) "$bench" "$@"
}

# One run of one side; a failed run is reported and left out of the medians.
measure() {
  local side=$1 workload=$2 round=$3 line warm=$ramp
  # 64 MiB transfers are few and long: no warm-up, every object counts.
  [ "${workload%%-*}" = 64m ] && warm=0
  if line=$("run_$side" run "$bucket" "$workload" "$seconds" "$warm"); then
    echo "round=$round $side $line" >&2
    echo "$side $line" >>"$results"
  else
    echo "round=$round $workload $side FAILED" >&2
    failed_runs=$((failed_runs + 1))
  fi
}

ceph_ok=0
if ceph_up; then ceph_ok=1; fi
cairn_up
log "preparing bucket $bucket on each side"
# The gateway may answer 503 while the cluster settles; the load generator retries those.
run_cairn prepare "$bucket" >&2
if [ "$ceph_ok" = 1 ] && ! run_rgw prepare "$bucket" >&2; then
  log "radosgw prepare failed: Ceph left out"; ceph_ok=0
fi

for round in $(seq 1 "$rounds"); do
  sides="cairn rgw"
  [ $((round % 2)) = 0 ] && sides="rgw cairn"
  for workload in $workloads; do
    for side in $sides; do
      [ "$side" = rgw ] && [ "$ceph_ok" != 1 ] && continue
      measure "$side" "$workload" "$round"
    done
  done
done

[ "$ceph_ok" = 1 ] || log "Ceph was not measured: rgw=- ratio=- below"
# shellcheck disable=SC2086 # one argument per workload
python3 - "$results" $workloads <<'PY'
import json, statistics, sys
path, workloads = sys.argv[1], sys.argv[2:]
figures = {}
for line in open(path):
    side, text = line.split(" ", 1)
    run = json.loads(text)
    figures.setdefault((run["workload"], side), []).append(run)
# Goals of issue 6: Cairn at 4x radosgw for 4 KiB objects, 1.5x for 64 MiB.
goals = {"4k": 4.0, "64m": 1.5}
for workload in workloads:
    small = workload.startswith("4k")
    key, fmt = ("ops_per_s", "%.0f") if small else ("mb_per_s", "%.1f")
    out = {}
    for side in ("cairn", "rgw"):
        runs = figures.get((workload, side))
        if runs:
            out[side] = statistics.median(r[key] for r in runs)
            out[side + "_p99"] = "%.0f" % statistics.median(r["p99_us"] for r in runs)
    cairn, rgw = out.get("cairn"), out.get("rgw")
    ratio = cairn / rgw if cairn is not None and rgw else None
    show = lambda v: fmt % v if v is not None else "-"
    line = f"{workload} cairn={show(cairn)} rgw={show(rgw)} ratio={'%.2f' % ratio if ratio else '-'}"
    if small:
        line += f" cairn_p99_us={out.get('cairn_p99', '-')} rgw_p99_us={out.get('rgw_p99', '-')}"
    print(line)
    goal = goals[workload.split("-")[0]]
    if ratio is not None:
        verdict = "meets" if ratio >= goal else "misses"
        print(f"# {workload}: ratio {ratio:.2f} {verdict} the goal of {goal}", file=sys.stderr)
PY
[ "$failed_runs" = 0 ] || { echo "s3.sh: $failed_runs runs failed" >&2; exit 1; }
