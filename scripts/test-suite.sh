#!/usr/bin/env bash
# Runs the whole test suite (`cargo test --workspace`) and then checks what it
# ran: the suite fails if any test failed, if any test was skipped
# (#[ignore]), or if fewer tests ran than MIN_TESTS, so a build that
# silently stops running tests cannot pass.
set -euo pipefail
cd "$(dirname "$0")/.."
min_tests=${MIN_TESTS:-200}
mkdir -p target
log=target/test-suite.log
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
read -r passed ignored < <(awk '
  /^test result:/ {
    for (i = 1; i < NF; i++) {
      if ($(i + 1) ~ /^passed;?$/) p += $i
      if ($(i + 1) ~ /^ignored;?$/) g += $i
    }
  }
  END { print p + 0, g + 0 }' "$log")
echo "test-suite: ${passed} tests passed, ${ignored} skipped (log: ${log})"
if (( ignored > 0 )); then
  echo "test-suite: ${ignored} tests were skipped; a skipped test is not a passing one" >&2
  exit 1
fi
if (( passed < min_tests )); then
  echo "test-suite: only ${passed} tests ran, fewer than MIN_TESTS=${min_tests}" >&2
  exit 1
fi
