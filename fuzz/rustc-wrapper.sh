#!/usr/bin/env bash
# RUSTC_WRAPPER of scripts/fuzz.sh: compiles the harness itself (crate `ember_fuzz`: the
# engine, its coverage callbacks, the target wrappers) without the SanitizerCoverage flags
# that RUSTFLAGS gives every other crate, so the engine's own loops neither count as coverage
# nor call the comparison callbacks.
rustc=$1
shift
case " $* " in
*" --crate-name ember_fuzz "*) ;;
*) exec "$rustc" "$@" ;;
esac
args=()
while [ $# -gt 0 ]; do
  if [ "$1" = -C ] && [ $# -gt 1 ]; then
    case $2 in
    passes=sancov-module | llvm-args=-sanitizer-coverage*)
      shift 2
      continue
      ;;
    esac
  fi
  args+=("$1")
  shift
done
exec "$rustc" "${args[@]}"
