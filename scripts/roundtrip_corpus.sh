#!/usr/bin/env bash
# Round-trip every file under the given directories through the llmzip CLI and compare bytes.
#
#   bash scripts/roundtrip_corpus.sh ../shared/corpora/bench/canterbury ../shared/corpora/bench/calgary
#
# Extra llmzip options go in LLMZIP_OPTS (for example LLMZIP_OPTS="-m llmzip-small -T 2").
# Prints one line per file and exits non-zero if any file fails to come back exactly.
set -euo pipefail
LLMZIP=${LLMZIP:-"$(dirname "$0")/../.venv/bin/llmzip"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
printf "%-40s %10s %10s %7s %8s %8s\n" file raw llmz bpb comp_s dec_s
for file in $(find "$@" -type f | sort); do
    packed="$work/$(basename "$file").llmz"
    start=$(date +%s.%N)
    "$LLMZIP" -q -f ${LLMZIP_OPTS:-} -o "$packed" "$file"
    middle=$(date +%s.%N)
    if "$LLMZIP" -q -d -c "$packed" | cmp -s - "$file"; then status=""; else status="  MISMATCH"; failures=$((failures + 1)); fi
    end=$(date +%s.%N)
    raw=$(stat -c %s "$file"); size=$(stat -c %s "$packed")
    printf "%-40s %10d %10d %7.3f %8.1f %8.1f%s\n" "$file" "$raw" "$size" \
        "$(echo "8 * $size / $raw" | bc -l)" "$(echo "$middle - $start" | bc)" "$(echo "$end - $middle" | bc)" "$status"
    rm -f "$packed"
done
echo "failures: $failures"
exit $((failures > 0))
