#!/usr/bin/env bash
# Greedy labels are the experiment's costly stage (hours on a CPU), so they are kept in a
# committed directory, LABELS, beside the work directory that a fresh machine lacks:
#
#   labels.sh run LABELS PART TIMES -- COMMAND...   make PART (a greedy shard's part file):
#       copy it from LABELS if it is there; else put back the shard's saved progress (if any),
#       run COMMAND (a `cotprune prune ... --resume` that records its seconds in TIMES), and
#       keep the finished part in LABELS. TIMES travels with the part, so that the results
#       report the labels' cost on a machine that only copied them.
#   labels.sh save LABELS DIR   copy the progress of DIR's unfinished shards into LABELS (the
#       chunks of finished chains and the current chain's checkpoint), to commit. A running
#       shard has no TIMES yet, so a shard finished on a later machine reports only the
#       seconds of the sitting that finished it.
#
# A shard's progress lives in DIR/.part-IIIII.partial while it runs, LABELS/partial-IIIII when
# saved. LABELS is only valid for the sets and options that made it: delete it to recompute.
set -euo pipefail
mode=$1 labels=$2
shift 2

shard_index() {  # part-00001-of-00008.parquet -> 00001
    local name=${1##*/}
    name=${name#part-}
    echo "${name%%-of-*}"
}

case $mode in
run)
    part=$1 times=$2
    shift 2
    [ "$1" = "--" ] && shift
    dir=$(dirname "$part")
    i=$(shard_index "$part")
    kept_times="$labels/${part##*/}"
    kept_times="${kept_times%.parquet}.times.json"
    if [ -f "$labels/${part##*/}" ]; then
        mkdir -p "$dir" && cp "$labels/${part##*/}" "$part"
        if [ -f "$kept_times" ]; then
            mkdir -p "$(dirname "$times")" && cp "$kept_times" "$times"
        fi
        exit 0
    fi
    if [ -d "$labels/partial-$i" ] && [ ! -d "$dir/.part-$i.partial" ]; then
        mkdir -p "$dir" && cp -r "$labels/partial-$i" "$dir/.part-$i.partial"
    fi
    "$@"
    mkdir -p "$labels" && cp "$part" "$labels/" && rm -rf "$labels/partial-$i"
    if [ -f "$times" ]; then cp "$times" "$kept_times"; fi
    ;;
save)
    dir=$1
    for partial in "$dir"/.part-*.partial; do
        [ -d "$partial" ] || continue
        i=${partial##*/.part-}
        i=${i%.partial}
        rm -rf "$labels/partial-$i.tmp" && mkdir -p "$labels"
        cp -r "$partial" "$labels/partial-$i.tmp"
        rm -f "$labels/partial-$i.tmp/.lock"
        rm -rf "$labels/partial-$i" && mv "$labels/partial-$i.tmp" "$labels/partial-$i"
        echo "saved $(ls "$labels/partial-$i" | grep -c '^chunk-') finished chains of shard $i"
    done
    ;;
*)
    echo "usage: labels.sh run LABELS PART TIMES -- COMMAND... | labels.sh save LABELS DIR" >&2
    exit 2
    ;;
esac
