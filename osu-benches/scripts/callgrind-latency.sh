#!/usr/bin/env bash
# Instructions per osu_latency iteration, per rank, under callgrind: the small-message cost of
# each rail mode without the noise of wall-clock timing on a shared machine.
#
#   bash osu-benches/scripts/callgrind-latency.sh SPEC OUT [MODES] [SIZE]
#
# SPEC: a testbed spec with one slot per host (two hosts), already up (`braid-testbed up`).
# MODES: default "single stripe weighted"; SIZE: default 8. Every rank runs under
# `valgrind --tool=callgrind`, waits block at once (BRAID_SPIN_US=0, so spinning does not
# depend on timing), and each mode runs twice, with N1 and N2 iterations: the difference of the
# instruction totals divided by N2 - N1 is the cost of one iteration (start-up and wire-up
# cancel out). Prints one line per mode and rank; the raw callgrind files stay in OUT.
set -euo pipefail
spec=${1:?spec}; out=${2:?out dir}; modes=${3:-single stripe weighted}; size=${4:-8}
n1=${N1:-1000}; n2=${N2:-3000}
bin=$(cd "$(dirname "$0")/../.." && pwd)/target/release
rails=${RAILS:-eth1,eth2,eth3,eth4}
mkdir -p "$out"
total() { # sum of "summary:" / "totals:" of a callgrind file
    awk '/^totals:/ {print $2}' "$1"
}
for mode in $modes; do
    for n in $n1 $n2; do
        rm -f "$out/cg-$mode-$n".*
        "$bin/mpirun" --testbed "$spec" --bind-to none --timeout 600 -n 2 \
            -x BRAID_RAILS="$rails" -x BRAID_RAIL_MODE="$mode" -x BRAID_SPIN_US=0 \
            valgrind --tool=callgrind --callgrind-out-file="$out/cg-$mode-$n.%q{PMI_RANK}" \
            "$bin/osu_latency" -m "$size:$size" -i "$n" -x 10 >/dev/null 2>"$out/cg-$mode-$n.log"
    done
    for r in 0 1; do
        a=$(total "$out/cg-$mode-$n1.$r"); b=$(total "$out/cg-$mode-$n2.$r")
        echo "$mode rank $r: $(( (b - a) / (n2 - n1) )) instructions per iteration ($size B)"
    done
done
