# Sourced by scripts/test.sh, benches/*.sh and .ci/run: makes sure the system packages Cairn's
# build and tests need are present. As root on Debian it installs what is missing; otherwise it
# names what to install and fails.
#
#   protobuf-compiler  protoc: raft-rs's prost codec generates its types at build time
#   fio                the chunk-store benchmark's reference (and its smoke test)
#   util-linux, mount  unshare and mount: the fallback-engine tests use a private ramfs
#   python3            reads fio's JSON in benches/chunkstore.sh
#   libclang-dev       bindgen generates RocksDB's Rust bindings at build time
#   g++                compiles the bundled RocksDB (once per machine, see below)
#   libiscsi-bin       real iSCSI initiators for the gateway's tests: iscsi-ls, iscsi-inq,
#                      iscsi-readcapacity16 and the conformance suite iscsi-test-cu
#   awscli, s3cmd,     real S3 clients for the S3 gateway's tests (Debian's awscli 2 at
#   rclone, curl       /usr/bin/aws; curl fetches presigned URLs)
#   python3-venv       a virtual environment with current boto3 from pip (cairn_ensure_boto3):
#                      Debian's python3-boto3 predates the checksum trailers SDKs send today
#   iproute2, nftables ip and nft: the chaos `partition` scenario runs each process in a
#                      network namespace and cuts links with nftables rules
#
# It also provides RocksDB as a prebuilt static library (cairn_ensure_rocksdb): the bundled
# C++ build costs 12-25 minutes on 2 cores, and cargo redoes it whenever the build-dependency
# graph's features change (adding almost any crate does). Built once per RocksDB version into
# $HOME/.cache/cairn-rocksdb and linked through ROCKSDB_LIB_DIR, it costs that once per machine.

cairn_ensure_prerequisites() {
  local missing=()
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  command -v fio >/dev/null || missing+=(fio)
  command -v unshare >/dev/null || missing+=(util-linux)
  command -v mount >/dev/null || missing+=(mount)
  command -v python3 >/dev/null || missing+=(python3)
  command -v g++ >/dev/null || missing+=(g++)
  command -v iscsi-test-cu >/dev/null || missing+=(libiscsi-bin)
  [ -x /usr/bin/aws ] || missing+=(awscli)
  command -v s3cmd >/dev/null || missing+=(s3cmd)
  command -v rclone >/dev/null || missing+=(rclone)
  command -v curl >/dev/null || missing+=(curl)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v nft >/dev/null || missing+=(nftables)
  /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
  ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || missing+=(libclang-dev)
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "cairn: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  else
    echo "cairn: missing system packages: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
    return 1
  fi
}

# Makes $HOME/.cache/cairn-py, a Python virtual environment with boto3 from pip (the S3
# tests' client), once per machine, and exports CAIRN_PYTHON.
cairn_ensure_boto3() {
  local venv="$HOME/.cache/cairn-py"
  if ! "$venv/bin/python" -c 'import boto3' 2>/dev/null; then
    echo "cairn: installing boto3 into $venv" >&2
    /usr/bin/python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet boto3 >&2
  fi
  export CAIRN_PYTHON="$venv/bin/python"
}

# Exports ROCKSDB_LIB_DIR and ROCKSDB_STATIC for the bundled RocksDB version in Cargo.lock,
# building the library once (in a target directory of its own) if it is not cached yet.
cairn_ensure_rocksdb() {
  local root version dir build
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  version=$(awk '/^name = "librocksdb-sys"/ {getline; gsub(/[" ]/, "", $0); sub(/version=/, "", $0); print}' "$root/Cargo.lock")
  dir="$HOME/.cache/cairn-rocksdb/$version"
  if [ ! -f "$dir/librocksdb.a" ]; then
    echo "cairn: building RocksDB $version once into $dir (about 15 minutes on 2 cores)" >&2
    build="$HOME/.cache/cairn-rocksdb/build"
    (cd "$root" && env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC CARGO_TARGET_DIR="$build" \
      cargo build --quiet -p librocksdb-sys >&2)
    mkdir -p "$dir"
    cp "$(ls -t "$build"/debug/build/librocksdb-sys-*/out/librocksdb.a | head -n 1)" "$dir/"
  fi
  export ROCKSDB_LIB_DIR="$dir" ROCKSDB_STATIC=1
}

# For scripts that run real processes (chaos/meta-failover.sh, benches/meta.sh): builds the
# test binaries exactly as `scripts/test.sh` does (dev profile, whole workspace, so nothing is
# built twice) and exports CAIRN_BIN and CAIRN_CHAOS.
cairn_test_binaries() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  cairn_ensure_prerequisites
  cairn_ensure_rocksdb
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}
  cargo test --quiet --workspace --no-run --manifest-path "$root/Cargo.toml" 2>/dev/null
  export CAIRN_BIN="$CARGO_TARGET_DIR/debug/cairn" CAIRN_CHAOS="$CARGO_TARGET_DIR/debug/cairn-chaos"
}
