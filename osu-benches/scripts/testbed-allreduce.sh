#!/bin/bash
# Issue 5's two-host collective floor: osu_allreduce on 4 ranks, 2 per host, on two testbed
# hosts joined by 4 rails: Braid two-level (BRAID_COLL_HIERARCHY=1) against flat (=0), against
# Open MPI (btl tcp over the rails, vader inside a host) and against MPICH (ch4:ucx, UCX's tcp
# transport over the rails, MPICH's own shared memory inside a host), interleaved, 3 rounds,
# then a table of the median per size at 8 B, 64 KiB and 1 MiB (summary.txt).
# Needs root, the release build and both rsmpi builds (target-rsmpi for Open MPI,
# target-rsmpi-mpich for MPICH; see README.md). Run it under `nice -n -20` on a busy machine.
# Usage: osu-benches/scripts/testbed-allreduce.sh [OUT_DIR]   (default results/testbed-allreduce)
set -u
cd "$(dirname "$0")/../.."
R=${1:-results/testbed-allreduce}
mkdir -p "$R"
S="$R/spec-2per.toml"
sed 's/slots = 4/slots = 2/' xen-bypass/specs/paper-2host-4rail.toml > "$S"
# Open MPI's daemons and MPICH's hydra proxies enter each host's namespace with its own host
# name (else both would take shared memory between the namespaces). Both launchers call it as
# `AGENT [-options] HOST COMMAND...` (Open MPI's plm_rsh_agent, hydra's -launcher-exec).
cat > "$R/ns-agent.sh" <<'AEOF'
#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
host="$1"; shift
exec ip netns exec "paper-$host" unshare --uts sh -c "hostname $host; $*"
AEOF
chmod +x "$R/ns-agent.sh"
A="$PWD/$R/ns-agent.sh"
target/release/braid-testbed down "$S" >/dev/null 2>&1
target/release/braid-testbed up "$S" || exit 1
trap 'target/release/braid-testbed down "$S"' EXIT
M="-m 8:1048576 -i 200 -x 20"
LAST=1048576
# Every job is bounded: T seconds (the system MPIs busy-poll with 4 ranks on 2 cores and take
# minutes); a job that ran out says so (exit 124).
T=900
said() { local rc=$?; [ $rc = 0 ] || echo "# $1: exit $rc (124: ended after $T s)"; }

# MPICH under hydra. Hydra's proxies reach mpiexec over the management bridge (-iface
# paper-mg); UCX carries the traffic between hosts over the rails only (UCX_TLS=tcp,self: no
# UCX shared memory, whose reachability test, the kernel's boot id, would join the namespaces).
# MPICH 4.0.2's MPI_Finalize over UCX 1.13's tcp transport hangs now and then: a rank's
# ucp_disconnect_nb flush of an endpoint whose wireup never completed waits for peers already
# sitting in the PMI barrier (openucx/ucx#8738). The benchmark has printed everything by then,
# so the run is watched: once the last size is out it gets 10 s to exit, then mpiexec is ended
# (SIGTERM: hydra ends its proxies and ranks) and the run is marked. Every wait is bounded.
mpich() {
  local out pid i
  out=$(mktemp)
  timeout $T mpiexec.mpich -launcher ssh -launcher-exec "$A" -iface paper-mg \
    -hosts n0:2,n1:2 -n 4 -genv UCX_TLS tcp,self -genv UCX_NET_DEVICES eth1,eth2,eth3,eth4 \
    target-rsmpi-mpich/release/osu_allreduce --backend rsmpi $M >"$out" 2>&1 &
  pid=$!
  for i in $(seq $((T * 10))); do
    kill -0 $pid 2>/dev/null || break
    grep -q "^$LAST " "$out" && break
    sleep 0.1
  done
  for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  if kill -0 $pid 2>/dev/null; then
    kill -TERM $pid
    wait $pid
    sed -n "1,/^$LAST /p" "$out"
    echo "# mpich: MPI_Finalize did not return 10 s after the last size; mpiexec ended"
  else
    wait $pid
    echo "# exit $?" >>"$out"
    cat "$out"
  fi
  rm -f "$out"
}

for round in 1 2 3; do
  for h in 1 0; do
    echo "### braid stripe hierarchy=$h round $round"
    target/release/mpirun --testbed "$S" -n 4 --timeout $T -x BRAID_RAILS=eth1,eth2,eth3,eth4 \
      -x BRAID_RAIL_MODE=stripe -x BRAID_COLL_HIERARCHY=$h osu_allreduce $M
    said braid
  done
  echo "### openmpi round $round"
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout $T mpirun.openmpi -n 4 \
    --bind-to none --host n0:2,n1:2 --mca plm_rsh_agent "$A" --mca pml ob1 \
    --mca btl self,vader,tcp --mca btl_tcp_if_include eth1,eth2,eth3,eth4 \
    --mca oob_tcp_if_include 10.77.12.0/24 target-rsmpi/release/osu_allreduce --backend rsmpi $M
  said openmpi
  echo "### mpich round $round"
  mpich
done 2>&1 | tee "$R/allreduce.txt"

# Median over the rounds of each configuration at the issue's sizes.
awk '
  /^### / { cfg = $2 " " $3 " " $4; if ($2 != "braid") cfg = $2; next }
  /^[0-9]+ +[0-9.]+$/ { v[cfg, $1] = v[cfg, $1] " " $2; if (!(cfg in seen)) { seen[cfg]; order[++n] = cfg } }
  function median(s,   a, k, i, j, t) {
    k = split(s, a, " ")
    for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return k ? (k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2) : "-"
  }
  END {
    printf "%-30s %12s %12s %12s  (median us over the rounds)\n", "osu_allreduce 4 ranks", "8 B", "64 KiB", "1 MiB"
    for (i = 1; i <= n; i++) {
      c = order[i]
      printf "%-30s %12s %12s %12s\n", c, median(v[c, 8]), median(v[c, 65536]), median(v[c, 1048576])
    }
  }' "$R/allreduce.txt" | tee "$R/summary.txt"
