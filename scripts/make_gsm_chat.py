#!/usr/bin/env python3
"""Writes examples/data/gsm-chat-1000.jsonl: the GSM-format problems of
../shared/data/gsm-format-1000.jsonl (1000 synthetic grade-school word
problems, answers ending in `#### N`) as chat `messages` lines, one user turn
(the question) and one assistant turn (the worked answer), for
examples/smollm2-gsm.lamda.

Usage: python3 scripts/make_gsm_chat.py [SRC] [DST]
"""
import json
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/gsm-format-1000.jsonl"
dst = sys.argv[2] if len(sys.argv) > 2 else "examples/data/gsm-chat-1000.jsonl"
with open(src) as f, open(dst, "w") as out:
    for line in f:
        if not line.strip():
            continue
        row = json.loads(line)
        stated = row["answer"].rsplit("#### ", 1)[1].strip()
        assert float(stated.replace(",", "")) == float(row["final"].replace(",", "")), row
        messages = [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["answer"]},
        ]
        out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
