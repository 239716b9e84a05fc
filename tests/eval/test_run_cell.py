"""`services.models.load_model` and `services.evaluation.run_cell`: loading, run records (done and failed), environment."""

import json
import math
import os
import re

import pytest
import torch

from services import environment, workloads
from services.evaluation import run_cell
from services.models import load_model

RECORD_FIELDS = {"model", "policy", "policy_params", "workload", "workload_params", "n_examples", "seed",
                 "device", "dtype", "run_key", "sweep", "status", "error", "attempts", "environment",
                 "accuracy", "kv_bytes_physical", "kv_bytes_full", "kept_fraction", "ttft_s", "tpot_s",
                 "tokens_per_s", "peak_memory_bytes", "extras"}


@pytest.fixture(scope="module")
def gpt():
    return load_model("random:tiny-gpt")


def cell(**overrides):
    config = {"model": "random:tiny-gpt", "policy": "full", "policy_params": {}, "workload": "passkey",
              "workload_params": {"context_length": 96}, "n_examples": 2, "seed": 0, "device": "cpu",
              "dtype": "float32"}
    config.update(overrides)
    return config


def test_done_record_has_every_field_and_measurements(gpt):
    rec = run_cell(gpt, cell())
    assert rec["status"] == "done", rec["error"]
    assert RECORD_FIELDS <= set(rec)
    json.dumps(rec, allow_nan=False)  # a plain, strict-JSON record
    assert 0.0 <= rec["accuracy"] <= 1.0 and rec["n_examples"] == 2
    assert rec["kept_fraction"] == pytest.approx(1.0)
    assert rec["kv_bytes_physical"] >= rec["kv_bytes_full"] > 0  # full keeps everything (+ capacity slack)
    assert rec["ttft_s"] > 0 and rec["tpot_s"] > 0 and rec["tokens_per_s"] > 0
    assert rec["peak_memory_bytes"] > 10 * 2**20
    assert len(rec["run_key"]) == 64
    examples = rec["extras"]["examples"]
    assert [e["id"] for e in examples] == ["passkey/s0/0", "passkey/s0/1"]
    assert all(e["prompt_tokens"] == 96 and len(e["content_hash"]) == 64 for e in examples)
    assert rec["accuracy"] == pytest.approx(sum(e["score"] for e in examples) / 2)
    env = rec["environment"]
    assert env["packages"]["torch"] and env["host"] and env["device"] == "cpu"


def test_same_cell_twice_gives_same_instances_and_predictions(gpt):
    a, b = run_cell(gpt, cell()), run_cell(gpt, cell())
    strip = [(e["content_hash"], e["prediction"]) for e in a["extras"]["examples"]]
    assert strip == [(e["content_hash"], e["prediction"]) for e in b["extras"]["examples"]]
    assert a["run_key"] == b["run_key"]


def test_an_evicting_policy_keeps_less(gpt):
    rec = run_cell(gpt, cell(policy="streaming_llm", policy_params={"budget_tokens": 16},
                             workload_params={"context_length": 128}))
    assert rec["status"] == "done", rec["error"]
    assert rec["kept_fraction"] < 0.5
    assert rec["kv_bytes_physical"] < rec["kv_bytes_full"]


@pytest.mark.parametrize("overrides, message", [
    ({"policy": "nope"}, r"ValueError: unknown policy 'nope'; allowed: .*full"),
    ({"policy": "streaming_llm", "policy_params": {"budget": 2.0}}, r"ValueError: .*budget"),
    ({"policy_params": {"colour": 1}}, r"ValueError: policy 'full' has no parameter 'colour'"),
    ({"workload": "nope"}, r"ValueError: unknown workload 'nope'"),
    ({"workload_params": {"depth": 3}}, r"ValueError: workload 'passkey': parameter 'depth' must be"),
    ({"n_examples": 0}, r"ValueError: cell config field 'n_examples'"),
    ({"dtype": "bfloat16"}, r"ValueError: cell asks for device='cpu' dtype='bfloat16'"),
])
def test_bad_input_gives_a_failed_record_not_an_exception(gpt, overrides, message):
    rec = run_cell(gpt, cell(**overrides))
    assert rec["status"] == "failed"
    assert __import__("re").search(message, rec["error"]), rec["error"]
    assert RECORD_FIELDS <= set(rec) and rec["accuracy"] is None
    assert "Traceback" in rec["extras"]["traceback"]


def test_a_crash_inside_the_cell_is_a_failed_record(gpt, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("engine exploded")

    monkeypatch.setattr("nats_model.engine.generation.generate", boom)
    rec = run_cell(gpt, cell())
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: engine exploded"


def test_lm_text_reports_perplexity_not_accuracy(gpt):
    rec = run_cell(gpt, cell(workload="lm_text", workload_params={"context_length": 48, "chunk_size": 8},
                             n_examples=1))
    assert rec["status"] == "done", rec["error"]
    assert rec["accuracy"] is None
    extras = rec["extras"]
    assert extras["scored_tokens"] + extras["nll_nan_tokens"] == 47
    # With a full cache the streamed scoring equals one dense forward over the same tokens.
    params = workloads.get("lm_text").validate({"context_length": 48, "chunk_size": 8})
    inst = workloads.get("lm_text").instances(params, 1, 0, count_tokens=gpt.count_tokens)[0]
    ids = torch.tensor([gpt.encode(inst.prompt)[: inst.meta["max_tokens"]]])
    with torch.no_grad():
        logits, _ = gpt.model(ids)
    dense_nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    assert extras["nll"] == pytest.approx(dense_nll, rel=1e-4)
    assert extras["ppl"] == pytest.approx(math.exp(dense_nll), rel=1e-4)
    # the scorer reports the cache: a full cache keeps every fed token
    assert rec["kept_fraction"] == 1.0 and rec["kv_bytes_full"] > 0
    assert rec["kv_bytes_full"] <= rec["kv_bytes_physical"] <= 1.06 * rec["kv_bytes_full"]


def test_lm_text_prompt_tokens_let_snapkv_compress(gpt):
    params = {"context_length": 48, "chunk_size": 4}
    streamed = run_cell(gpt, cell(workload="lm_text", workload_params=params, n_examples=1,
                                  policy="snapkv", policy_params={"budget_tokens": 12, "window_size": 4}))
    prompted = run_cell(gpt, cell(workload="lm_text", workload_params={**params, "prompt_tokens": 32},
                                  n_examples=1, policy="snapkv", policy_params={"budget_tokens": 12, "window_size": 4}))
    assert streamed["status"] == prompted["status"] == "done", (streamed["error"], prompted["error"])
    assert streamed["kept_fraction"] == 1.0
    # 12 of the 32 prompt tokens kept, then the 15 fed tokens after the prompt appended: 27 of 47
    assert prompted["kept_fraction"] == pytest.approx(27 / 47)
    assert prompted["kv_bytes_physical"] < streamed["kv_bytes_physical"]


def test_local_dataset_cell(gpt, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"context": "abc " * 10, "question": "Q?", "answer_prefix": " A:",
                                "answer": ["x"], "max_new_tokens": 3, "task": "qa_1"}) + "\n")
    rec = run_cell(gpt, cell(workload="local_dataset", workload_params={"path": str(path)}, n_examples=1))
    assert rec["status"] == "done", rec["error"]
    assert rec["extras"]["examples"][0]["new_tokens"] == 3


def test_load_model_errors_name_the_input():
    with pytest.raises(ValueError, match=r"model 'no-such-model' not found.*random:tiny-gpt"):
        load_model("no-such-model")
    with pytest.raises(ValueError, match=r"unknown random test model 'random:huge'"):
        load_model("random:huge")
    with pytest.raises(ValueError, match=r"dtype must be one of"):
        load_model("random:tiny-gpt", dtype="int8")
    with pytest.raises(ValueError, match=r"device: unknown device 'tpu'; allowed: cpu, cuda, cuda:N, auto"):
        load_model("random:tiny-gpt", device="tpu")


def test_gpt_checkpoint_folder_round_trip(gpt, tmp_path):
    gpt.model.save_pretrained(tmp_path / "ckpt")
    handle = load_model(str(tmp_path / "ckpt"))
    assert handle.kind == "gpt" and handle.count_tokens("héllo") == 6
    a = run_cell(gpt, cell(n_examples=1))["extras"]["examples"][0]["prediction"]
    b = run_cell(handle, cell(model=str(tmp_path / "ckpt"), n_examples=1))["extras"]["examples"][0]["prediction"]
    assert a == b


def test_hugging_face_model_with_its_own_tokenizer(tmp_path):
    tiny = load_model("random:tiny-llama")
    assert tiny.kind == "hf"
    text = "The grass is green. The sky is blue."
    assert tiny.count_tokens(text) < len(text)  # a real (BPE) tokenizer, not bytes
    tiny.model.save_pretrained(tmp_path / "llama")
    tiny.tokenizer.save_pretrained(tmp_path / "llama")
    handle = load_model(str(tmp_path / "llama"))
    assert handle.kind == "hf" and handle.count_tokens(text) == tiny.count_tokens(text)
    rec = run_cell(handle, cell(model=str(tmp_path / "llama"), workload_params={"context_length": 80},
                                n_examples=1))
    assert rec["status"] == "done", rec["error"]
    assert all(abs(e["prompt_tokens"] - 80) <= 4 and e["prompt_tokens"] <= 80 for e in rec["extras"]["examples"])


def test_environment_info():
    env = environment.environment_info()
    assert set(env) >= {"git_commit", "packages", "device", "device_name", "host", "python"}
    # the tests run in a git checkout: HEAD's commit, "-dirty" with uncommitted changes (or the override)
    pinned = os.environ.get("NATSBENCH_GIT_COMMIT")
    if pinned:
        assert env["git_commit"] == pinned
    else:
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", env["git_commit"] or ""), env["git_commit"]


def _params_for(policy):
    from nats_model import policies

    try:
        policies.build(policy)
        return {}
    except ValueError as exc:
        assert "budget" in str(exc), exc
        return {"budget": 0.3}


@pytest.fixture(scope="module")
def nats_gpt():
    return load_model("random:tiny-gpt-nats")


@pytest.mark.parametrize("policy", __import__("nats_model.policies", fromlist=["available"]).available())
def test_every_registered_policy_runs_a_cell(nats_gpt, policy):
    params = _params_for(policy)
    rec = run_cell(nats_gpt, cell(model="random:tiny-gpt-nats", policy=policy, policy_params=params,
                                  workload_params={"context_length": 128}, n_examples=1))
    assert rec["status"] == "done", rec["error"]
    assert 0.0 < rec["kept_fraction"] <= 1.0
    if params:  # a budget of 30% of the tokens seen keeps well under the full cache
        assert rec["kept_fraction"] <= 0.35 and rec["kv_bytes_physical"] < 0.5 * rec["kv_bytes_full"]


CHAT_TEMPLATE = ("{% for m in messages %}<s>[user] {{ m['content'] }} [/user]{% endfor %}"
                 "{% if add_generation_prompt %}[assistant] {% endif %}")


def test_chat_on_encodes_through_the_chat_template():
    tiny = load_model("random:tiny-llama")
    tiny.tokenizer.chat_template = CHAT_TEMPLATE
    inst = workloads.get("passkey").instances({"context_length": 120, "chat": "on"}, 1, seed=2)[0]
    ids = tiny.encode_instance(inst)
    user = inst.meta["chat"]["user"]
    want = tiny.tokenizer(f"<s>[user] {user} [/user][assistant] The pass key is ", add_special_tokens=False)
    assert ids == list(want["input_ids"]) and ids[0] == tiny.tokenizer.bos_token_id
    assert tiny.encode_instance(workloads.get("passkey").instances({"context_length": 120}, 1, seed=2)[0]) \
        == tiny.encode(inst.prompt)  # chat off: the plain prompt
    rec = run_cell(tiny, cell(model="random:tiny-llama", workload_params={"context_length": 80, "chat": "on"},
                              n_examples=2))
    assert rec["status"] == "done", rec["error"]
    assert all(e["prompt_tokens"] > 80 for e in rec["extras"]["examples"])  # the template's tokens on top


def test_chat_on_without_a_chat_template_fails_the_cell_by_name(gpt):
    rec = run_cell(gpt, cell(workload_params={"context_length": 80, "chat": "on"}, n_examples=1))
    assert rec["status"] == "failed"
    assert "parameter 'chat'='on' needs a Hugging Face model whose tokenizer has a chat template" in rec["error"]
