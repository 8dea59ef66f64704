#!/usr/bin/env bash
# Kills the metadata leader again and again while a client creates volumes, takes two of five
# members down at once, wipes a member's data directory and has it rejoin by snapshot; then
# checks every member lists every acknowledged volume exactly once.
#
# Usage: chaos/meta-failover.sh [SECONDS] [MEMBERS] [DIR]     (defaults: 20 s, 3 members)
#
# Ends with `meta-failover: acknowledged=N lost=L duplicated=D` (L and D must be 0; the exit
# status is non-zero otherwise, or if a failover took more than 5 s, or if the wiped member did
# not catch up by snapshot). Progress and per-kill failover times go to stderr.
set -euo pipefail
seconds=${1:-20}
members=${2:-3}
dir=${3:-$(mktemp -d /var/tmp/cairn-meta-failover.XXXXXX)}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../scripts/prerequisites.sh
source "$here/../scripts/prerequisites.sh"
cairn_test_binaries
exec "$CAIRN_CHAOS" meta-failover "$dir" "$seconds" "$members"
