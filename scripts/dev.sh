#!/usr/bin/env bash
# Starts `cairn dev`: a complete single-host cluster in one process (the README's first command).
# Usage: bash scripts/dev.sh [DATA_DIR] [extra `cairn dev` flags...]
# Installs the system prerequisites first when run as root on Debian (scripts/prerequisites.sh),
# builds `cairn` in the dev profile the tests share, then runs it in the foreground (Ctrl-C stops
# it; run it again on the same directory and everything is still there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/prerequisites.sh
source scripts/prerequisites.sh
cairn_ensure_prerequisites
cairn_ensure_rocksdb
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
data="${1:-/var/tmp/cairn-dev}"
shift || true
cargo build --quiet -p cairn
echo "cairn dev: data in $data; source $data/endpoints.env once it says ready"
exec "$CARGO_TARGET_DIR/debug/cairn" dev --data "$data" "$@"
