"""Model names: what a name stands for (a folder in `models/`, a path, a `random:` test model) and the tiny
random test models. Both the cell runner (`services.evaluation`) and the adapter checks
(`services.adapters`) resolve names here, so neither imports the other for it.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
RANDOM_MODELS = ("random:tiny-gpt", "random:tiny-gpt-nats", "random:tiny-llama")


def shipped_models() -> list[str]:
    """Names of the reference models in `models/` (folders with a config.json)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())


def _tiny_bpe_tokenizer():
    """A byte-level BPE tokenizer (vocabulary ~400) trained in memory on the task formats' text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from nats_model.data import tasks

    corpus = [tasks.DEFAULT_FILLER * 4, tasks.PASSKEY_HEAD, tasks.NIAH_HEAD, tasks.KV_HEAD, tasks.VAR_HEAD,
              "What is the pass key? The pass key is 12345. Remember it.", "The number for K is 67890.",
              "Recall a b c.\nAnswer: a=1 b=2", "What is z? z=q. q=a. a=123."]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def _random_model(name: str):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name in ("random:tiny-gpt", "random:tiny-gpt-nats"):
            from nats_model.models.gpt import GPT, GPTConfig
            from nats_model.tokenizer import ByteTokenizer

            attention = "nats" if name.endswith("-nats") else "full"
            cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=8192, attention=attention,
                            window=16)
            return GPT(cfg).eval(), ByteTokenizer(), "gpt"
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = _tiny_bpe_tokenizer()
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        return LlamaForCausalLM(cfg).eval(), tok, "hf"


def resolve_model(name_or_path: str) -> Path | None:
    """The folder a model name stands for (None for a `random:` test model); ValueError naming
    the name and what is allowed when it resolves to nothing."""
    name = str(name_or_path)
    if name.startswith("random:"):
        if name not in RANDOM_MODELS:
            raise ValueError(f"unknown random test model {name!r}; allowed: {', '.join(RANDOM_MODELS)}")
        return None
    folder = Path(name).expanduser()
    if not folder.is_dir() and (MODELS_DIR / name).is_dir():
        folder = MODELS_DIR / name
    if not folder.is_dir():
        raise ValueError(
            f"model {name!r} not found: not a folder and not a shipped model (shipped: "
            f"{', '.join(shipped_models()) or 'none yet'}); test models: {', '.join(RANDOM_MODELS)}"
        )
    return folder
