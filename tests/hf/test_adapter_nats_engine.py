"""`nats` on a Hugging Face Llama whose scorers come from an adapter folder: W, chunk size and Global
bias are taken from the adapter, and the engine keeps exactly what the NAtS rule lets the next query
see (the brute-force `NatsReference` of the policy tests, and the dense `mask.visibility` row)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from adapter_testlib import save_tiny_llama, scorer_weights

from nats_model import adapter as A
from nats_model.mask import SLIDING, visibility
from nats_model.models.bridge import bridge_for
from nats_model.policies import build
from nats_model.scorer import infer_types

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the policy tests' brute force (tests/policies)
from policies.kv_reference import RecordingEngine  # noqa: E402
from policies.test_nats import NatsReference  # noqa: E402


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NATSBENCH_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("base") / "tiny-llama")


def _adapter(folder, base_dir, window, chunk_size, global_bias=0.0):
    cfg = A.AdapterConfig(**A.base_facts(base_dir), base_sha256=A.base_weights_sha256(base_dir), window=window,
                          chunk_size=chunk_size, global_bias=global_bias, lam=3e-7, steps=0)
    return A.save_adapter(folder, scorer_weights(seed=5, scale=0.5), cfg)


def _model_with_adapter(base_dir, adapter_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True).eval()
    cfg, scorers = A.attach_adapter(model, adapter_dir, base_dir)
    return model, cfg, scorers


def _drive(model, engine, policy, ids, mask, chunk, n_decode):
    """Prefill in chunks then greedy decode through the HF attention function; the tokens and the
    last-position logits of every step."""
    bridge = bridge_for(model)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    P = ids.shape[1]
    out_logits = []
    with torch.no_grad(), bridge.session(engine):
        for s in range(0, P, chunk):
            e = min(P, s + chunk)
            pos, val = positions[:, s:e], mask[:, s:e]
            engine.begin_step(pos, val, prefill=True, last_prefill=e == P)
            logits = bridge.forward(ids[:, s:e], policy.rope_positions(pos, engine.kept_per_seq(), val), engine)
        out_logits.append(logits[:, -1])
        toks = [logits[:, -1].argmax(-1)]
        pos = mask.long().sum(1)
        for _ in range(n_decode):
            valid = torch.ones(ids.shape[0], 1, dtype=torch.bool)
            engine.begin_step(pos[:, None], valid, prefill=False)
            logits = bridge.forward(toks[-1][:, None], pos[:, None], engine)
            out_logits.append(logits[:, -1])
            toks.append(logits[:, -1].argmax(-1))
            pos = pos + 1
    return torch.stack(toks, 1), out_logits


# W >= C - 1 as in the paper (W 256, C 32): with W < C - 1 a one-token step still sees a Sliding-window key
# of the chunk its own token completes (the policy types it one step later than inside a prefill chunk)
@pytest.mark.parametrize("window, chunk_size, prefill_chunk", [(3, 1, 5), (3, 4, 7), (4, 3, 40)])
def test_kept_sets_match_the_brute_force(tmp_path, base_dir, window, chunk_size, prefill_chunk):
    ad = _adapter(tmp_path / "ad", base_dir, window, chunk_size)
    model, cfg, _ = _model_with_adapter(base_dir, ad)
    policy = build("nats")  # no settings given: all from the adapter, through the model config
    policy.bind_model(model)
    assert policy.settings() == (window, 0.0, chunk_size)
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, model.config.vocab_size, (2, 21), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :4] = False  # left padding
    policy.reset()
    engine = RecordingEngine(policy, batch=2)
    ref = NatsReference(batch=2, window=window, chunk_size=chunk_size, global_bias=0.0)
    toks, logits = _drive(model, engine, policy, ids, mask, prefill_chunk, n_decode=6)
    ref_toks, ref_logits = _drive(model, ref, policy, ids, mask, prefill_chunk, n_decode=6)
    assert len(engine.history) == len(ref.history)
    for step, (got, want) in enumerate(zip(engine.history, ref.history, strict=True)):
        assert got == want, f"step {step}: kept positions differ"
    assert torch.equal(toks, ref_toks)
    for a, b in zip(logits, ref_logits, strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    kept = [len(v) for v in engine.history[-1].values()]
    assert min(kept) < 27  # the types really drop tokens (27 seen by the longer row)


class _LogitRecorder(RecordingEngine):
    """The real engine, also keeping each layer's type logits (B, Hkv, T, 3) of the last step."""

    def attend(self, layer, q, k, v, **kw):
        self.type_logits = getattr(self, "type_logits", {})
        self.type_logits[layer] = kw["type_logits"]
        return super().attend(layer, q, k, v, **kw)


def test_one_shot_prefill_keeps_the_dense_mask_row_of_the_next_query(tmp_path, base_dir):
    window = 3
    ad = _adapter(tmp_path / "ad", base_dir, window, 1, global_bias=0.25)
    model, _, _ = _model_with_adapter(base_dir, ad)
    policy = build("nats")
    policy.bind_model(model)
    policy.reset()
    engine = _LogitRecorder(policy, batch=1)
    N = 30
    ids = torch.randint(3, model.config.vocab_size, (1, N), generator=torch.Generator().manual_seed(4))
    _drive(model, engine, policy, ids, torch.ones_like(ids, dtype=torch.bool), N, n_decode=0)
    n_dropped = 0
    for layer, lg in engine.type_logits.items():
        types = infer_types(lg, global_bias=0.25)  # (1, Hkv, N)
        # the next query (position N) sees row N of the dense mask over N + 1 tokens (its own type is
        # irrelevant to earlier keys when it is not Global)
        ext = torch.cat([types, torch.full_like(types[..., :1], SLIDING)], -1)
        row = visibility(ext, window)[..., N, :N]  # (1, Hkv, N)
        for h in range(types.shape[1]):
            want = torch.nonzero(row[0, h]).flatten().tolist()
            assert engine.history[-len(engine.type_logits) + layer][(layer, 0, h)] == want
            n_dropped += N - len(want)
    assert n_dropped > 0


def test_adapter_for_another_base_is_refused_before_attaching(tmp_path, base_dir):
    from transformers import AutoModelForCausalLM

    ad = _adapter(tmp_path / "ad", base_dir, 3, 1)
    other = save_tiny_llama(tmp_path / "other", seed=9)
    model = AutoModelForCausalLM.from_pretrained(other, local_files_only=True)
    with pytest.raises(ValueError, match="made for another base model: base_sha256"):
        A.attach_adapter(model, ad, other)
    assert all(getattr(layer.self_attn, "_nats_scorers", None) is None for layer in model.model.layers)
