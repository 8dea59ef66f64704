#!/usr/bin/env bash
# iSCSI: a `cairn dev` volume served by Cairn's iSCSI gateway against the tgt user-space target
# (../shared/peers/tgt.sh, a file-backed LUN on loopback), both driven by the same load
# generator (cairn-bench-iscsi), in the same run.
#
# Usage: benches/iscsi.sh DIR [SECONDS] [ROUNDS]
#
# Starts `cairn dev --data DIR/cairn` (volume `bench` of SPAN_MIB, IOPS limit CAIRN_BENCH_IOPS) and tgtd with
# its LUN file in DIR/tgt (TGT_SIZE = SPAN_MIB), writes the first SPAN_MIB of both, then runs
# every workload on both sides ROUNDS times (default 3), SECONDS each (default 10) after RAMP
# seconds of warm-up, alternating the two systems (the side going first swaps every round).
# Prints one line per workload, medians over the rounds:
#   <workload> cairn=<v> tgt=<v> ratio=<cairn/tgt> cairn_p99_us=<v> tgt_p99_us=<v>
# 4k workloads report IOPS, 1m workloads MB/s; p99 is per-command latency in µs. Queue depth N
# is N sessions with one command in flight each. Cairn logs in with CHAP (as endpoints.env
# says), tgt without. Per-run figures (with p50) go to stderr.
#
# Cairn enforces each volume's IOPS limit on iSCSI. The bench volume gets a custom limit of
# CAIRN_BENCH_IOPS (default 1,000,000, the highest, so the gateway is measured, not the QoS;
# 10000 reproduces tier ultra). A workload with Cairn runs at 95% of the limit or more is named
# on stderr after the table: its Cairn figure is the limit's, not the gateway's.
# tgt has no such cap, and by tgt.sh's defaults serves its LUN file through the page cache
# (TGT_BSTYPE=rdwr, no TGT_BSOFLAGS): its writes are not durable when acknowledged, Cairn's are
# (committed by their PG). TGT_BSTYPE and TGT_BSOFLAGS (e.g. direct:sync) pass through to tgt.sh.
#
# When tgt cannot be brought up (or CAIRN_BENCH_TGT=0) its fields read n/a and Cairn is still
# measured. On exit both systems are stopped (by PID) and their data files deleted, logs kept
# (DIR/cairn.log, DIR/tgt/tgtd.log).
#
# Knobs (environment): CAIRN_BENCH_RAMP (2), CAIRN_BENCH_SPAN_MIB (1024), CAIRN_BENCH_IOPS,
# CAIRN_BENCH_WORKLOADS (all six), CAIRN_BENCH_PORT (7292, cairn dev's admin/data port; its
# iSCSI portal takes any free port), CAIRN_BENCH_TGT (1; 0 skips tgt), CAIRN_BENCH_TGT_PORT
# (3270; tgt.sh takes the first free port from there), CAIRN_BENCH_KEEP (0; 1 keeps data files),
# CAIRN_BENCH_ISCSI and CAIRN_BENCH_CAIRN (prebuilt cairn-bench-iscsi and cairn; otherwise both
# are built in release mode), TGT_PEER_SCRIPT (../shared/peers/tgt.sh).
set -euo pipefail

dir=${1:?usage: benches/iscsi.sh DIR [SECONDS] [ROUNDS]}
seconds=${2:-10}
rounds=${3:-3}
ramp=${CAIRN_BENCH_RAMP:-2}
span_mib=${CAIRN_BENCH_SPAN_MIB:-1024}
workloads=${CAIRN_BENCH_WORKLOADS:-4k-randread-qd1 4k-randread-qd32 4k-randwrite-qd1 4k-randwrite-qd32 1m-seqread-qd8 1m-seqwrite-qd8}
port=${CAIRN_BENCH_PORT:-7292}
with_tgt=${CAIRN_BENCH_TGT:-1}
tgt_port=${CAIRN_BENCH_TGT_PORT:-3270}
# The bench volume's IOPS limit (custom QoS; metadata's VOLUME_IOPS_MAX by default).
cairn_iops_cap=${CAIRN_BENCH_IOPS:-1000000}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tgt_sh=${TGT_PEER_SCRIPT:-$here/../../shared/peers/tgt.sh}
[ -f "$tgt_sh" ] || tgt_sh=/work/shared/peers/tgt.sh

# shellcheck source=../scripts/prerequisites.sh
source "$here/../scripts/prerequisites.sh"
cairn_ensure_prerequisites
log() { echo "# $*" >&2; }

bench=${CAIRN_BENCH_ISCSI:-}
cairn=${CAIRN_BENCH_CAIRN:-}
if [ -z "$bench" ] || [ -z "$cairn" ]; then
  cairn_ensure_rocksdb
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}
  log "building cairn and cairn-bench-iscsi (release)"
  cargo build --quiet --release --manifest-path "$here/../Cargo.toml" -p cairn >&2
  cargo build --quiet --release --manifest-path "$here/../Cargo.toml" -p cairn-benches \
    --bin cairn-bench-iscsi >&2
  bench=${bench:-$CARGO_TARGET_DIR/release/cairn-bench-iscsi}
  cairn=${cairn:-$CARGO_TARGET_DIR/release/cairn}
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cairn_dir=$dir/cairn
tgt_dir=$dir/tgt
results=$(mktemp)
cairn_pid=""
tgt_pid=""
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
  if [ -n "$tgt_pid" ]; then
    bash "$tgt_sh" stop "$tgt_pid" >&2 || true
    rm -f "$tgt_dir/tgtd.pid"
  fi
  if [ "${CAIRN_BENCH_KEEP:-0}" != 1 ]; then
    # The big files: Cairn's disks and Raft logs, tgt's LUN file. Logs stay.
    rm -rf "$cairn_dir"
    rm -f "$tgt_dir/lun1.img"
  fi
  rm -f "$results"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free space on DIR's filesystem, in MiB.
free_mib() { df -Pm "$dir" | awk 'NR == 2 {print $4}'; }
# Cairn holds the span three times (replicas) plus its Raft logs, tgt once; keep a margin.
need_mib=$((span_mib * 5 + 4096))
[ "$(free_mib)" -ge "$need_mib" ] || { echo "iscsi.sh: need ${need_mib} MiB free in $dir" >&2; exit 2; }

# --- tgt peer -------------------------------------------------------------------------------
tgt_portal=""
tgt_target=""
tgt_up() {
  [ "$with_tgt" = 1 ] || { log "tgt skipped (CAIRN_BENCH_TGT=0)"; return 1; }
  [ -f "$tgt_sh" ] || { log "no $tgt_sh: tgt skipped"; return 1; }
  if [ ! -x /usr/sbin/tgtd ]; then
    log "installing tgt ($tgt_sh install)"
    bash "$tgt_sh" install >"$dir/tgt-install.log" 2>&1 || {
      log "tgt could not be installed (see $dir/tgt-install.log): tgt skipped"; return 1; }
  fi
  # A tgtd left by an interrupted run of this script: stop it (tgt.sh checks it is a tgtd).
  if [ -f "$tgt_dir/tgtd.pid" ]; then
    bash "$tgt_sh" stop "$(cat "$tgt_dir/tgtd.pid")" >&2 || true
    rm -f "$tgt_dir/tgtd.pid"
  fi
  rm -f "$tgt_dir/lun1.img"
  local out url rest
  # No zero prefill by tgt.sh: our own prefill writes every byte of the span.
  out=$(TGT_SIZE="${span_mib}M" TGT_PORT="$tgt_port" TGT_PREFILL=0 bash "$tgt_sh" start "$tgt_dir") || {
    log "tgt did not start: tgt skipped"; return 1; }
  tgt_pid=$(sed -n 's/^TGTD_PID=//p' <<<"$out")
  url=$(sed -n 's/^ISCSI_URL=//p' <<<"$out")
  # iscsi://ADDR:PORT/IQN/LUN: the load generator takes PORTAL and IQN/LUN.
  rest=${url#iscsi://}
  tgt_portal=${rest%%/*}
  tgt_target=${rest#*/}
  if [ -z "$tgt_pid" ] || [ -z "$tgt_portal" ] || [ "$tgt_target" = "$rest" ]; then
    log "cannot read tgt.sh's output: $out"; return 1
  fi
  log "tgt (pid $tgt_pid) serves $tgt_target at $tgt_portal"
}

run_tgt() {
  env -u ISCSI_CHAP_USER -u ISCSI_CHAP_SECRET \
    "$bench" run "$tgt_portal" "$tgt_target" "$1" "$seconds" "$span_mib" "$ramp"
}

# --- Cairn ----------------------------------------------------------------------------------
cairn_portal=""
cairn_target=""
cairn_chap_user=""
cairn_chap_secret=""
cairn_up() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "iscsi.sh: port $port is taken; set CAIRN_BENCH_PORT" >&2; exit 2
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
  [ -f "$cairn_dir/endpoints.env" ] || { echo "iscsi.sh: cairn dev not ready in 120 s" >&2; exit 1; }
  # Read, not sourced: tgt.sh's names overlap (ISCSI_PORTAL), and only Cairn's runs get CHAP.
  value() { sed -n "s/^$1=//p" "$cairn_dir/endpoints.env" | tail -n 1; }
  cairn_portal=$(value ISCSI_PORTAL)
  cairn_target=$(value ISCSI_TARGET)bench
  cairn_chap_user=$(value ISCSI_CHAP_USER)
  cairn_chap_secret=$(value ISCSI_CHAP_SECRET)
  log "creating volume bench (${span_mib} MiB, at most $cairn_iops_cap IOPS)"
  CAIRN_ADMIN_URL=$(value ADMIN_URL) CAIRN_ADMIN_TOKEN=$(value ADMIN_TOKEN) \
    "$cairn" volume create bench --pool default --size "${span_mib}M" --tier ultra \
    --iops "$cairn_iops_cap" >&2
  log "cairn serves $cairn_target at $cairn_portal"
}

run_cairn() {
  ISCSI_CHAP_USER=$cairn_chap_user ISCSI_CHAP_SECRET=$cairn_chap_secret \
    "$bench" run "$cairn_portal" "$cairn_target" "$1" "$seconds" "$span_mib" "$ramp"
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

tgt_ok=0
if tgt_up; then tgt_ok=1; fi
cairn_up
log "prefilling ${span_mib} MiB on each side"
# The volume's target shows within the gateway's refresh interval; the login waits for it.
ISCSI_CHAP_USER=$cairn_chap_user ISCSI_CHAP_SECRET=$cairn_chap_secret \
  "$bench" prefill "$cairn_portal" "$cairn_target" "$span_mib" >&2
if [ "$tgt_ok" = 1 ]; then
  if ! env -u ISCSI_CHAP_USER -u ISCSI_CHAP_SECRET \
    "$bench" prefill "$tgt_portal" "$tgt_target" "$span_mib" >&2; then
    log "tgt prefill failed: tgt left out"; tgt_ok=0
  fi
fi

for round in $(seq 1 "$rounds"); do
  sides="cairn tgt"
  [ $((round % 2)) = 0 ] && sides="tgt cairn"
  for workload in $workloads; do
    for side in $sides; do
      [ "$side" = tgt ] && [ "$tgt_ok" != 1 ] && continue
      measure "$side" "$workload" "$round"
    done
  done
done

# shellcheck disable=SC2086 # one argument per workload
python3 - "$results" "$cairn_iops_cap" $workloads <<'PY'
import statistics, sys
path, cap, workloads = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
figures = {}
for line in open(path):
    workload, side, *fields = line.split()
    values = dict(field.split("=", 1) for field in fields)
    runs = figures.setdefault((workload, side), [])
    runs.append((float(values["iops"]), float(values["mbps"]), float(values["p99_us"])))
capped = []
for workload in workloads:
    by_iops = workload.startswith("4k")
    fmt = "%.0f" if by_iops else "%.1f"
    out = {}
    for side in ("cairn", "tgt"):
        runs = figures.get((workload, side))
        if runs:
            out[side] = statistics.median(r[0] if by_iops else r[1] for r in runs)
            out[side + "_p99"] = "%.0f" % statistics.median(r[2] for r in runs)
            if side == "cairn":
                at_cap = sum(1 for r in runs if r[0] >= 0.95 * cap)
                if at_cap:
                    capped.append((workload, at_cap, len(runs)))
    cairn, tgt = out.get("cairn"), out.get("tgt")
    ratio = "%.2f" % (cairn / tgt) if cairn is not None and tgt else "n/a"
    show = lambda v: fmt % v if v is not None else "n/a"
    print(f"{workload} cairn={show(cairn)} tgt={show(tgt)} ratio={ratio}"
          f" cairn_p99_us={out.get('cairn_p99', 'n/a')} tgt_p99_us={out.get('tgt_p99', 'n/a')}")
for workload, at_cap, count in capped:
    print(f"# {workload}: Cairn reached 95% of the volume's {cap:.0f} IOPS limit in {at_cap} of"
          f" {count} runs: its figure is (at least partly) the limit, not the gateway's",
          file=sys.stderr)
PY
[ "$failed_runs" = 0 ] || { echo "iscsi.sh: $failed_runs runs failed" >&2; exit 1; }
