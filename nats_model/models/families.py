"""The Hugging Face model families natsbench runs: the engine's attention (`nats_model.models.bridge`),
the NAtS scorers (`nats_model.models.hf_nats`) and the GGUF import (`services.model_import`) all read
this one list. No torch import here, so a command can check a family before loading anything."""

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
