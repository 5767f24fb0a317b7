#!/usr/bin/env bash
# Braid's test suite: formatting, lints, the whole workspace's tests (unit, property and
# multi-process integration tests through mpirun), and the rsmpi backend of the benchmarks
# built and run against the system Open MPI.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --document-private-items --locked --quiet

# The engine's unit, property and robustness tests once more in debug mode, where integer
# overflow panics (release builds wrap).
cargo test -p braid-engine --locked

# Integration tests start mpirun and the test programs from target/release.
cargo build --release --workspace --bins --locked
cargo test --release --workspace --locked

# The benchmarks' rsmpi backend against the system MPI (Open MPI owns `mpicc`).
if command -v mpicc >/dev/null 2>&1; then
    bash scripts/rsmpi-smoke.sh
else
    echo "SKIPPED: rsmpi backend (no system MPI: install openmpi-bin libopenmpi-dev libclang-dev)"
fi
