#!/bin/bash
# Issue 5's two-host collective floor: osu_allreduce on 4 ranks, 2 per host, on two testbed
# hosts joined by 4 rails: Braid two-level (BRAID_COLL_HIERARCHY=1) against flat (=0) and
# against Open MPI (btl tcp over the rails, vader inside a host), interleaved, 3 rounds.
# Needs root, the release build and the Open MPI rsmpi build (see README.md).
# Usage: osu-benches/scripts/testbed-allreduce.sh [OUT_DIR]   (default results/testbed-allreduce)
set -u
cd "$(dirname "$0")/../.."
R=${1:-results/testbed-allreduce}
mkdir -p "$R"
S="$R/spec-2per.toml"
sed 's/slots = 4/slots = 2/' xen-bypass/specs/paper-2host-4rail.toml > "$S"
# Open MPI's daemons enter each host's namespace with its own hostname (else it would use
# shared memory between the namespaces).
cat > "$R/ompi-agent.sh" <<'AEOF'
#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
host="$1"; shift
exec ip netns exec "paper-$host" unshare --uts sh -c "hostname $host; $*"
AEOF
chmod +x "$R/ompi-agent.sh"
target/release/braid-testbed down "$S" >/dev/null 2>&1
target/release/braid-testbed up "$S" || exit 1
trap 'target/release/braid-testbed down "$S"' EXIT
M="-m 8:1048576 -i 200 -x 20"
for round in 1 2 3; do
  for h in 1 0; do
    echo "### braid stripe hierarchy=$h round $round"
    target/release/mpirun --testbed "$S" -n 4 --timeout 300 -x BRAID_RAILS=eth1,eth2,eth3,eth4 \
      -x BRAID_RAIL_MODE=stripe -x BRAID_COLL_HIERARCHY=$h osu_allreduce $M
  done
  echo "### openmpi round $round"
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 mpirun.openmpi -n 4 \
    --bind-to none --host n0:2,n1:2 --mca plm_rsh_agent "$R/ompi-agent.sh" --mca pml ob1 \
    --mca btl self,vader,tcp --mca btl_tcp_if_include eth1,eth2,eth3,eth4 \
    --mca oob_tcp_if_include 10.77.12.0/24 target-rsmpi/release/osu_allreduce --backend rsmpi $M
done 2>&1 | tee "$R/allreduce.txt"
