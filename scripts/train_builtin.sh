#!/usr/bin/env bash
# Rebuild the built-in models from scratch: corpus, tokenizer, weights, model cards.
#
#   bash scripts/train_builtin.sh            # the CPU models (small, tiny)
#   bash scripts/train_builtin.sh tiny       # one of them
#   bash scripts/train_builtin.sh base       # a GPU model: runs of at most 9 minutes; repeat the
#   bash scripts/train_builtin.sh base       # same command until the model is written
#
# The corpus comes from ../shared/corpora/train and Debian packages (scripts/build_corpus.py).
# Runs are scheduled by training time (--time-budget-minutes) because they were made on a
# shared 2-core CPU of varying speed; a stopped run continues with the same command plus
# --resume. The shipped weights are copied from data/runs/NAME/model into
# src/llmzip/builtin/NAME after checking them with the leaderboard.
set -euo pipefail
cd "$(dirname "$0")/.."
LLMZIP=.venv/bin/llmzip
[ -d data/corpus ] || .venv/bin/python scripts/build_corpus.py --output data

common=(data/corpus --batch-size 8 --steps 1000000 --warmup-steps 60 --seed 1234)
for name in ${@:-small tiny}; do
    case $name in
        small)  # 1.3M parameters; trains the 4096-token tokenizer the others share
            "$LLMZIP" train "${common[@]}" -o data/runs/llmzip-small/model --work-dir data/runs/llmzip-small \
                --preset small --tokenizer-sample-bytes 12582912 --time-budget-minutes 72 ;;
        tiny)   # 0.6M parameters, the fast level; same tokenizer as small
            "$LLMZIP" train "${common[@]}" -o data/runs/llmzip-tiny/model --work-dir data/runs/llmzip-tiny \
                --preset tiny --tokenizer src/llmzip/builtin/llmzip-small/tokenizer.json \
                --time-budget-minutes 40 --threads 1 ;;
        base|large)  # ~8.6M and ~34M parameters on a CUDA GPU, each with its own tokenizer; the
                     # time budget counts training time across runs, so every run resumes the last
            resume=(); [ -f data/runs/llmzip-$name/checkpoint.pt ] && resume=(--resume)
            budget=$([ "$name" = base ] && echo 25 || echo 60)
            "$LLMZIP" train "${common[@]}" -o data/runs/llmzip-$name/model --work-dir data/runs/llmzip-$name \
                --preset "$name" --batch-size 64 --device cuda --time-budget-minutes "$budget" \
                --max-minutes 9 "${resume[@]}" ;;
        *) echo "unknown model $name (small, tiny, base, large)" >&2; exit 2 ;;
    esac
done
