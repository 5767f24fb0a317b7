#!/usr/bin/env bash
# Builds the benchmarks' rsmpi backend against the system Open MPI and runs three of them
# briefly with validation, so CI proves the same benchmark source runs on a system MPI.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_TARGET_DIR=target-rsmpi cargo build --release --locked -p braid-osu --features rsmpi --bins
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mca=(--mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include lo)
for bench in osu_latency osu_bw; do
    timeout 120 mpirun.openmpi -n 2 "${mca[@]}" "target-rsmpi/release/$bench" --backend rsmpi \
        -m 1:65536 -i 100 -x 10 -c
done
# A nonblocking v-form with OSU's -t (MPI_Test calls during the compute) on three ranks.
timeout 120 mpirun.openmpi -n 3 "${mca[@]}" target-rsmpi/release/osu_igatherv --backend rsmpi \
    -m 1:4096 -i 20 -x 2 -t 5 -c
echo "rsmpi backend on Open MPI: ok"
