//! Training data: plain text, JSONL and token-id safetensors, tokenized and batched.
