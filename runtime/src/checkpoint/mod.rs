//! Checkpoints: Hugging Face folders (config.json + safetensors), dtype conversion on load.
