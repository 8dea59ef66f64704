#!/usr/bin/env bash
# Metadata service throughput: 3 `cairn meta` members on loopback, data under DIR. Volume
# creations/s and linearizable reads/s for 1 and 8 concurrent clients, 3 rounds each
# (medians), and as the reference measured in the same run on the same directory: fio's
# 4 KiB write + fdatasync rate (a creation costs at least one group-commit fdatasync on the
# leader and on a follower).
#
# Usage: benches/meta.sh DIR [SECONDS]
# Prints: `meta clients=<n> create_ops_per_s=<median> read_ops_per_s=<median> fdatasync_per_s=<fio> create_per_fdatasync=<ratio>`
set -euo pipefail
dir=${1:?usage: benches/meta.sh DIR [SECONDS]}
seconds=${2:-5}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../scripts/prerequisites.sh
source "$here/../scripts/prerequisites.sh"
cairn_test_binaries
chaos=$CAIRN_CHAOS
mkdir -p "$dir"
fsync_rate=$(fio --name=fsync --directory="$dir" --rw=write --bs=4k --size=64m --fdatasync=1 \
  --time_based --runtime="$seconds" --output-format=json | python3 -c \
  'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))')
rm -f "$dir"/fsync.*
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for clients in 1 8; do
  creates=(); reads=()
  for round in 1 2 3; do
    run="$dir/run-$clients-$round"
    line=$("$chaos" meta-bench "$run" "$seconds" "$clients")
    rm -rf "$run"
    creates+=("$(sed -E 's/.*create_ops_per_s=([0-9.]+).*/\1/' <<<"$line")")
    reads+=("$(sed -E 's/.*read_ops_per_s=([0-9.]+).*/\1/' <<<"$line")")
  done
  c=$(printf '%s\n' "${creates[@]}" | median)
  r=$(printf '%s\n' "${reads[@]}" | median)
  ratio=$(python3 -c "print(f'{$c/$fsync_rate:.2f}')")
  echo "meta clients=$clients create_ops_per_s=$c read_ops_per_s=$r fdatasync_per_s=$fsync_rate create_per_fdatasync=$ratio"
done
