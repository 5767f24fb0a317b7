#!/bin/bash
# One benchmark sitting: Braid against Open MPI and MPICH on one host, interleaved rounds
# (osu_compare): p2p latency/bandwidth over shared memory and over TCP, the 2-rank
# collectives of issue 5, osu_mbw_mr on 8 oversubscribed ranks, and a hot 4 MiB memcpy
# reference. Needs the release build and both rsmpi builds (see README.md).
# Usage: osu-benches/scripts/sitting.sh [OUT_DIR]   (default results/sitting)
set -u
cd "$(dirname "$0")/../.."
R=${1:-results/sitting}
mkdir -p "$R"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/memcpy.c" <<'CEOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
int main(){ size_t n=4<<20; char*a=aligned_alloc(4096,n),*b=aligned_alloc(4096,n); memset(a,1,n); memset(b,2,n);
 for(int w=0;w<20;w++) memcpy(b,a,n);
 struct timespec s,e; int it=400; clock_gettime(CLOCK_MONOTONIC,&s); for(int i=0;i<it;i++){ memcpy(b,a,n); __asm__ volatile(""::"r"(b):"memory"); } clock_gettime(CLOCK_MONOTONIC,&e);
 double t=(e.tv_sec-s.tv_sec)+(e.tv_nsec-s.tv_nsec)/1e9; printf("memcpy 4 MiB hot: %.0f MB/s\n", n*(double)it/t/1e6); }
CEOF
gcc -O2 "$tmp/memcpy.c" -o "$tmp/memcpy"
OC="nice -n -20 target/release/osu_compare"
B='--braid-args=--bind-to core'
run() { name=$1; shift; echo "### $name"; "$@" 2>&1 | grep -v "^#   "; }
"$tmp/memcpy" | tee "$R/memcpy.txt"
for sys in openmpi mpich; do
  if [ $sys = openmpi ]; then MA="--mpi-args=--bind-to core"; else MA="--mpi-args=-bind-to core"; fi
  run "shm latency $sys" $OC osu_latency --system $sys --rounds 3 "$B" "$MA" --output $R/lat-$sys.json -- -m 8:65536 | tee $R/lat-$sys.txt
  run "shm bw $sys" $OC osu_bw --system $sys --rounds 3 "$B" "$MA" --output $R/bw-$sys.json -- -m 65536:4194304 | tee $R/bw-$sys.txt
  run "shm bibw $sys" $OC osu_bibw --system $sys --rounds 3 "$B" "$MA" --output $R/bibw-$sys.json -- -m 65536:4194304 | tee $R/bibw-$sys.txt
  for c in osu_allreduce osu_bcast osu_reduce osu_allgather; do
    run "$c $sys" $OC $c --system $sys --rounds 3 "$B" "$MA" --output $R/$c-$sys.json -- -m 8:1048576 | tee $R/$c-$sys.txt
  done
done
run "tcp latency openmpi" env BRAID_SHM=off $OC osu_latency --rounds 3 "$B" "--mpi-args=--bind-to core --mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include lo" --output $R/tcp-lat-openmpi.json -- -m 1:65536 | tee $R/tcp-lat-openmpi.txt
run "tcp latency mpich" env BRAID_SHM=off $OC osu_latency --system mpich --rounds 3 "$B" "--mpi-args=-bind-to core" --env MPIR_CVAR_NOLOCAL=1 --env UCX_TLS=tcp,self --output $R/tcp-lat-mpich.json -- -m 1:65536 | tee $R/tcp-lat-mpich.txt
echo "### mbw_mr 8 ranks oversubscribed"
( time nice -n -20 target/release/mpirun -n 8 osu_mbw_mr -m 8:4194304 ) 2>&1 | tee $R/mbw_mr8-braid.txt
( time OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 nice -n -20 mpirun.openmpi --oversubscribe -n 8 target-rsmpi/release/osu_mbw_mr --backend rsmpi -m 8:4194304 ) 2>&1 | tee $R/mbw_mr8-openmpi.txt
( time nice -n -20 mpiexec.mpich -n 8 target-rsmpi-mpich/release/osu_mbw_mr --backend rsmpi -m 8:4194304 ) 2>&1 | tee $R/mbw_mr8-mpich.txt
