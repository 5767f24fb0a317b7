#!/usr/bin/env bash
# Model-checks braid-shm's lock-free ring with loom (tests/loom.rs).
#
# Usage: shared-mem/ci/loom.sh            (from anywhere in the workspace)
# A separate target dir keeps the `--cfg braid_loom` build from invalidating the normal one.
# The search is exhaustive (no LOOM_MAX_PREEMPTIONS bound): the models take well under a
# second; the time is the first release build with `--cfg braid_loom` (~2.5 min on 2 cores,
# ~15 s incrementally).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="${RUSTFLAGS:-} --cfg braid_loom"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-../target/loom}"
cargo test -p braid-shm --release --test loom -- --test-threads=1 "$@"
