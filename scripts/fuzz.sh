#!/usr/bin/env bash
# Fuzzes ember's untrusted-input parsers and devices for a bounded time (see the README's
# Fuzzing section and fuzz/src/main.rs).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]      default: all targets, 60 s each
#
# Builds fuzz/ once with SanitizerCoverage instrumentation (stable rustc: inline 8-bit edge
# counters and comparison tracing), then runs each target for SECONDS and prints, per target,
# executions, executions per second, corpus size and findings. Exits non-zero on a finding,
# naming the reproducer (replay it with `ember-fuzz replay TARGET FILE`).
#
# Environment: FUZZ_JOBS (targets run at once; default: the number of CPUs), FUZZ_DIR (work
# directory: build, working corpora kept between runs, artifacts; default target/fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-all}
seconds=${2:-60}
jobs=${FUZZ_JOBS:-$(nproc)}
work=${FUZZ_DIR:-$PWD/target/fuzz}
triple=$(rustc -vV | sed -n 's/^host: //p')

export CARGO_TARGET_DIR="$work/build"
# `--target` keeps the flags off build scripts and proc macros.
export RUSTFLAGS="-C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3 \
-C llvm-args=-sanitizer-coverage-inline-8bit-counters \
-C llvm-args=-sanitizer-coverage-trace-compares \
-C llvm-args=-sanitizer-coverage-prune-blocks=0"
# ...except the harness's own crate (fuzz/rustc-wrapper.sh says why).
export RUSTC_WRAPPER="$PWD/fuzz/rustc-wrapper.sh"
start=$(date +%s)
echo "== fuzz: building the instrumented harness ($triple, profile fuzz)"
cargo build -q --locked -p ember-fuzz --bin ember-fuzz --profile fuzz --target "$triple"
bin="$CARGO_TARGET_DIR/$triple/fuzz/ember-fuzz"
echo "== fuzz: built in $(( $(date +%s) - start )) s"

if [ "$target" = all ]; then
  targets=$("$bin" list | awk '{print $1}')
else
  targets=$target
fi

mkdir -p "$work/logs" "$work/artifacts"
run_one() {
  local t=$1 status=0
  "$bin" run "$t" --seconds "$seconds" --corpus "$work/corpus/$t" --artifacts "$work/artifacts" \
    >"$work/logs/$t.out" 2>"$work/logs/$t.err" &
  local pid=$!
  wait "$pid" || status=$?
  # A run that ended on a finding by signal, hang or allocation leaves its scratch directory.
  rm -rf "${TMPDIR:-/tmp}/ember-fuzz/$pid"
  return "$status"
}

pids=()
names=()
failed=0
for t in $targets; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    wait -n || true
  done
  run_one "$t" &
  pids+=($!)
  names+=("$t")
done
status=()
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then status+=(0); else status+=($?); fi
done

printf '%-16s %12s %10s %8s %14s  %s\n' target execs exec/s corpus edges findings
for i in "${!names[@]}"; do
  t=${names[$i]}
  line=$(grep '^target=' "$work/logs/$t.out" | tail -1 || true)
  get() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<" $line"; }
  if [ -n "$line" ]; then
    printf '%-16s %12s %10s %8s %14s  %s\n' "$t" "$(get execs)" "$(get exec_per_sec)" \
      "$(get corpus)" "$(get edges)" "$(get findings)$( [ -n "$(get reproducer)" ] && echo " $(get reproducer)")"
  else
    printf '%-16s %12s %10s %8s %14s  %s\n' "$t" - - - - "crashed (exit ${status[$i]})"
  fi
  if [ "${status[$i]}" != 0 ]; then
    failed=1
    echo "---- $t: exit ${status[$i]}; its log ($work/logs/$t.err):" >&2
    tail -n 20 "$work/logs/$t.err" >&2
    ls "$work/artifacts/"*"-$t-"* 2>/dev/null | sed 's/^/reproducer: /' >&2 || true
  fi
done
echo "== fuzz: $(( $(date +%s) - start )) s in all"
exit "$failed"
