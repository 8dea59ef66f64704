# Sourced by the benchmark scripts: the workload names they share
# (`<block>-<pattern>-qd<depth>`, e.g. 4k-randwrite-qd32) and what fio makes of them.

# Translates a workload name into fio's --rw, --bs and --iodepth.
fio_shape() {
  local block=${1%%-*} rest=${1#*-}
  local pattern=${rest%%-*} depth=${rest##*-qd}
  case $pattern in
    randread) rw=randread ;; randwrite) rw=randwrite ;; seqread) rw=read ;; seqwrite) rw=write ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
  esac
  echo "--rw=$rw --bs=$block --iodepth=$depth"
}
