#!/usr/bin/env bash
# Install everything and run the whole test suite on CPU. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Headless Chromium renders the `llmzip explain` page in its test; the test skips without it.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null) \
        || echo "chromium could not be installed; its test will be skipped"
fi
lint=0
.venv/bin/ruff check src tests scripts benchmarks || lint=$?  # configuration in pyproject.toml
status=0
.venv/bin/python -m pytest -rs "$@" || status=$?
if [ "$status" = 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
if [ "$lint" != 0 ]; then
    echo "ruff found lint errors: failing" >&2
    exit 1
fi
exit "$status"
