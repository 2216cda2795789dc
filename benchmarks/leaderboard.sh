#!/bin/sh
# The README leaderboard: `llmzip bench` over the text files of the bench corpora.
#
#   benchmarks/leaderboard.sh                                  # every built-in model, whole files
#   MODELS=llmzip-small,llmzip-base benchmarks/leaderboard.sh  # chosen models (names or paths)
#   MAX_BYTES=4000 MODELS=path/to/model benchmarks/leaderboard.sh   # a quick check on the first 4000 bytes
#
# Settings, all from the environment:
#   MODELS     comma-separated models (default: every built-in model installed)
#   CORPORA    the bench corpora (default: ../shared/corpora/bench beside the repository)
#   OUT        where results go (default: benchmarks/results): results.md, results.csv,
#              results.json, bits_per_byte.png, scaling.png, and cache.json so a re-run only
#              measures what changed
#   MAX_BYTES  measure only the first N bytes of each file (default: whole files)
#   DEVICE     cpu or cuda (default: cuda when available)
#   EXTRA      further `llmzip bench` options, e.g. "--model-only" or "--no-cache"
#
# Files stored as NAME.xz are decompressed in memory and reported as NAME.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
corpora=${CORPORA:-$root/../shared/corpora/bench}
out=${OUT:-$root/benchmarks/results}

files="
canterbury/alice29.txt
canterbury/lcet10.txt
canterbury/plrabn12.txt
calgary/book1
calgary/book2
enwik8-prefix/enwik6
chinese/hongloumeng.txt.xz
silesia/dickens.xz
canterbury-large/bible.txt.xz
canterbury-large/world192.txt.xz
"

set --
for file in $files; do
    if [ ! -f "$corpora/$file" ]; then
        echo "leaderboard.sh: $corpora/$file is missing; set CORPORA to the bench corpora" >&2
        exit 1
    fi
    set -- "$@" "$corpora/$file"
done

if [ -n "${MODELS+set}" ]; then set -- "$@" --models "$MODELS"; fi
if [ -n "${MAX_BYTES:-}" ]; then set -- "$@" --max-bytes "$MAX_BYTES"; fi
if [ -n "${DEVICE:-}" ]; then set -- "$@" --device "$DEVICE"; fi

# shellcheck disable=SC2086  # EXTRA is a list of options
exec llmzip bench "$@" --baselines gzip,bzip2,xz,zstd,brotli,cmix --out "$out" ${EXTRA:-}
