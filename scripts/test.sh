#!/usr/bin/env bash
# Runs Cairn's whole test suite (the README's test command; CI runs exactly this).
# Installs the system prerequisites first when run as root on Debian (scripts/prerequisites.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/prerequisites.sh
source scripts/prerequisites.sh
cairn_ensure_prerequisites
cairn_ensure_rocksdb
cairn_ensure_boto3
exec cargo test --workspace "$@"
