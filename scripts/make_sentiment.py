#!/usr/bin/env python3
"""Writes examples/data/movie-reviews.tsv, the binary sentiment data of
examples/minilm-sentiment.lamda, from ../shared/data/movie-review-sentences.tsv
(10,605 Rotten Tomatoes sentences with their mean human sentiment in [-4, 4],
`id<TAB>score<TAB>text`, CRLF, no header; from the sdist of PyPI
vaderSentiment==3.3.2, MIT license).

Output: UTF-8, LF line ends, a header `text<TAB>label`, then one sentence per
line with label 1 if score > 0 and 0 if score < 0; sentences with score 0 are
dropped, and so is any later repeat of a text already written (the source has
two repeated sentences, each with the same sign both times, which would
otherwise leak between a train and a test split).

Order: the source lists the positive sentences first and the negative ones
after them, so the rows are put in a fixed pseudo-random order, sorted by
sha256 of the source id (as a decimal string): any contiguous slice (e.g. the
last N rows as a test split) is a fair sample. No random generator is
involved, so the order is the same everywhere.

Usage (from the repository root; plain Python 3, no packages):
    python3 scripts/make_sentiment.py [SOURCE] [OUT]
"""
import hashlib
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/movie-review-sentences.tsv"
OUT = sys.argv[2] if len(sys.argv) > 2 else "examples/data/movie-reviews.tsv"

with open(SRC, encoding="utf-8", newline="") as f:
    lines = [l for l in f.read().split("\r\n") if l]

rows, seen = [], set()
n_zero = n_dup = 0
for line in lines:
    ident, score, text = line.split("\t")
    score = float(score)
    assert text == text.strip() and text and "\t" not in text and "\n" not in text and "\r" not in text, line
    if score == 0:
        n_zero += 1
        continue
    if text in seen:
        n_dup += 1
        continue
    seen.add(text)
    rows.append((hashlib.sha256(ident.encode()).hexdigest(), text, 1 if score > 0 else 0))
rows.sort()

with open(OUT, "w", encoding="utf-8", newline="\n") as f:
    f.write("text\tlabel\n")
    for _, text, label in rows:
        f.write(f"{text}\t{label}\n")

pos = sum(r[2] for r in rows)
print(
    f"{OUT}: {len(rows)} sentences ({pos} positive, {len(rows) - pos} negative) from {len(lines)}; "
    f"dropped {n_zero} with score 0 and {n_dup} repeated texts"
)
