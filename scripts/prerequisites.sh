# Sourced by scripts/test.sh, benches/*.sh and .ci/run: makes sure the system packages Cairn's
# build and tests need are present. As root on Debian it installs what is missing; otherwise it
# names what to install and fails.
#
#   protobuf-compiler  protoc: raft-rs's prost codec generates its types at build time
#   fio                the chunk-store benchmark's reference (and its smoke test)
#   util-linux, mount  unshare and mount: the fallback-engine tests use a private ramfs
#   python3            reads fio's JSON in benches/chunkstore.sh

cairn_ensure_prerequisites() {
  local missing=()
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  command -v fio >/dev/null || missing+=(fio)
  command -v unshare >/dev/null || missing+=(util-linux)
  command -v mount >/dev/null || missing+=(mount)
  command -v python3 >/dev/null || missing+=(python3)
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
