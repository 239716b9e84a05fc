"""natsbench next to NVIDIA kvpress: decode ms/token at 10% kept and whether the kept positions agree.

Both sides run the same random Llama (transformers `LlamaConfig`: 4 layers, hidden 512, 8 query /
8 KV heads of dim 64, vocabulary 1024, fp32; weights drawn once with a fixed seed and saved as
safetensors, loaded by both sides) on the same random prompt (`--prompt-len`, 8192 by default,
2048 with `--quick`). kvpress 0.5.5 pins `transformers<5.3`, so its side runs in its own virtualenv
(`--kvpress-python`, `make bench-kvpress` creates `.venv-kvpress`); our side runs in this
interpreter. Each side is a subprocess that writes a JSON file into the work folder; the files are
joined by the prompt's sha256. Both sides stay alive through a run and their timed decode blocks
(8 steps) alternate, one side at a time, so load changes on a shared CPU hit both alike.

Per policy, at `--keep` (10%) of the prompt kept, n_kept = int(L * keep) as kvpress computes it:
- kvpress: `with press(model): model(prompt, past_key_values=DynamicCache())` (the press
  compresses every layer at the end of prefill), then greedy decode the way kvpress' pipeline
  does (`model(tok, past_key_values=cache, position_ids=...)`: transformers appends, never evicts).
- ours: `nats_model.engine.generation`'s engine (512-token prefill chunks), `budget_tokens=n_kept`; decode
  steps through the engine, which evicts every step (`streaming_llm`) or appends (`snapkv`).
StreamingLLMPress(n_sink=4) vs `streaming_llm` (positions "original") is the same rule: the kept
positions of every (layer, head) must be equal. SnapKVPress(window 64, kernel 5) vs `snapkv`
(window_size 64, kernel_size 5, pooling "avg") is the same rule up to float rounding and tie
order: the overlap of the kept sets is reported. kvpress' kept positions are found by matching
each kept key against the layer's keys before compression (captured by a hook).

Our side also times transformers' own DynamicCache decode at the same kept length in this venv
(`hf_dynamic_ms`), which tells transformers-version effects apart from the engine's.

    flock /tmp/natsbench-heavy.lock .venv/bin/python benchmarks/vs_kvpress.py [--quick]

Human table first; the LAST line is one JSON object (keys include
`decode_ms_ours_over_kvpress_10pct` and `streaming_kept_sets_equal`). Without a usable kvpress it
prints one line saying why and a JSON line with `skipped`, and exits 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"vocab_size": 1024, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
         "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 32768}
POLICIES = ("streaming_llm", "snapkv")
N_SINK, SNAP_WINDOW, SNAP_KERNEL = 4, 64, 5


# ---------------------------------------------------------------- shared by both sides
def load_model(workdir: Path):
    """The benchmark Llama with the saved weights (same on both sides, any transformers 5.x)."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**MODEL))
    model.load_state_dict(load_file(str(workdir / "model.safetensors")))
    return model.eval()


def n_kept_for(prompt_len: int, keep: float) -> int:
    """kvpress' count: int(k_len * (1 - compression_ratio))."""
    return int(prompt_len * (1 - (1 - keep)))


def median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


class Gate:
    """Interleaves the two sides' timed decode blocks: before each block (and after the last) a side
    says READY on the protocol stream and waits for the driver's GO, so only one side runs while the
    other is timed. Without a driver (no protocol stream) it does nothing."""

    def __init__(self, stream=None):
        self.stream = stream

    def __call__(self) -> None:
        if self.stream is not None:
            self.stream.write("READY\n")
            self.stream.flush()
            sys.stdin.readline()


def timed_decode(step, tok: torch.Tensor, start_pos: int, warmup: int, steps: int, gate: Gate | None = None,
                 block: int = 8) -> tuple[list[float], list[float], list[int]]:
    """Greedy decode `warmup + steps` tokens with `step(tok (1,), pos) -> logits (1, V)`, positions
    from `start_pos`; returns the wall and CPU time of this thread (less disturbed by other
    processes on a shared machine) of each of the last `steps`, and every token. The timed steps
    run in blocks of `block`, each after `gate()` (and `gate()` once more at the end)."""
    gate = gate or Gate()
    times, cpu, tokens = [], [], []
    for i in range(warmup + steps):
        if i >= warmup and (i - warmup) % block == 0:
            gate()
        c0 = time.thread_time()
        t0 = time.perf_counter()
        logits = step(tok, start_pos + i)
        tok = logits.argmax(-1)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        tokens.append(int(tok[0]))
    gate()
    return times, cpu, tokens


def positions_by_head(per_layer: list[torch.Tensor]) -> list[list[list[int]]]:
    """[(H, n) long] per layer -> sorted position lists [layer][head]."""
    return [[sorted(int(p) for p in row) for row in layer] for layer in per_layer]


# ---------------------------------------------------------------- kvpress side
def kvpress_side(spec: dict, workdir: Path, gate: Gate | None = None) -> dict:
    import kvpress
    import transformers
    from kvpress import SnapKVPress, StreamingLLMPress
    from transformers import DynamicCache

    model = load_model(workdir)
    model.set_attn_implementation("sdpa")
    ids = torch.tensor([spec["prompt"]])
    L, ratio = ids.shape[1], 1 - spec["keep"]
    presses = {"streaming_llm": lambda: StreamingLLMPress(compression_ratio=ratio, n_sink=N_SINK),
               "snapkv": lambda: SnapKVPress(compression_ratio=ratio, window_size=SNAP_WINDOW,
                                             kernel_size=SNAP_KERNEL)}
    out = {"side": "kvpress", "versions": {"kvpress": kvpress.__version__ if hasattr(kvpress, "__version__")
                                           else _dist_version("kvpress"),
                                           "transformers": transformers.__version__, "torch": torch.__version__},
           "policies": {}}
    for name in spec["policies"]:
        cache = DynamicCache()
        full_keys: dict[int, torch.Tensor] = {}

        def grab(module, args, kwargs, output, _cache=cache, _keys=full_keys):
            # runs before the press' hook (registered first): the layer's keys before compression
            _keys[module.layer_idx] = _cache.layers[module.layer_idx].keys.clone()  # (1, Hkv, L, hd)

        hooks = [layer.self_attn.register_forward_hook(grab, with_kwargs=True) for layer in model.model.layers]
        try:
            with torch.no_grad(), presses[name]()(model):
                t0 = time.perf_counter()
                logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
                prefill_s = time.perf_counter() - t0
        finally:
            for h in hooks:
                h.remove()
        kept = []
        for i in range(len(model.model.layers)):
            K = cache.layers[i].keys[0]  # (Hkv, n_kept, hd)
            F_ = full_keys[i][0]  # (Hkv, L, hd)
            where = torch.cdist(K, F_).argmin(-1)  # (Hkv, n_kept) nearest prompt key (matmul distances)
            # the nearest must be the very key: compressing copies keys, it does not change them
            if not torch.equal(F_.gather(1, where[..., None].expand_as(K)), K):
                raise RuntimeError(f"kvpress layer {i}: a kept key equals no key of the prompt")
            kept.append(where)
        kept_len = int(cache.layers[0].keys.shape[2])

        def step(tok, pos, _cache=cache):
            return model(input_ids=tok[:, None], past_key_values=_cache, position_ids=torch.tensor([[pos]])).logits[:, -1]

        with torch.no_grad():
            tok = logits[:, -1].argmax(-1)
            times, cpu, tokens = timed_decode(step, tok, L, spec["warmup"], spec["steps"], gate)
        out["policies"][name] = {"prefill_s": prefill_s, "decode_ms": median_ms(times), "decode_times_s": times,
                                 "decode_cpu_s": cpu,
                                 "tokens": tokens, "kept_after_prefill": kept_len,
                                 "kept_positions": positions_by_head(kept)}
    return out


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# ---------------------------------------------------------------- our side
def ours_side(spec: dict, workdir: Path, gate: Gate | None = None) -> dict:
    import transformers
    from transformers import DynamicCache

    from nats_model.engine.generation import _bind, _decode_step, _prefill
    from nats_model.engine.kv_engine import KVEngine
    from nats_model.models.bridge import bridge_for
    from nats_model.policies import build

    model = load_model(workdir)
    ids = torch.tensor([spec["prompt"]])
    L = ids.shape[1]
    n_kept = n_kept_for(L, spec["keep"])
    params = {"streaming_llm": {"n_sink": N_SINK, "positions": "original"},
              "snapkv": {"window_size": SNAP_WINDOW, "kernel_size": SNAP_KERNEL, "pooling": "avg"}}
    out = {"side": "ours", "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
           "policies": {}}
    bridge = bridge_for(model)
    mask = torch.ones_like(ids, dtype=torch.bool)
    for name in spec["policies"]:
        policy = build(name, budget_tokens=n_kept, **params[name])
        _bind(policy, bridge)
        policy.reset()
        engine = KVEngine(policy, 1)
        with torch.no_grad(), bridge.session(engine):
            t0 = time.perf_counter()
            logits = _prefill(bridge, engine, ids, mask, spec["prefill_chunk"])
            prefill_s = time.perf_counter() - t0
            kept = []
            for i in sorted(engine.cache.layers):
                store = engine.cache.layers[i]
                pos = store.rows(store.pos, fill=-1).masked_fill(~store.valid_rows(), -1)  # (Hkv, row_cap)
                kept.append([row[row >= 0] for row in pos])
            kept_len = int(engine.cache.layers[0].lens[0])

            def step(tok, pos, _engine=engine):
                return _decode_step(bridge, _engine, tok, torch.tensor([pos]))

            tok = logits.argmax(-1)
            times, cpu, tokens = timed_decode(step, tok, L, spec["warmup"], spec["steps"], gate)
            # what of a step is the engine's (append, attention, eviction), on further untimed steps
            engine_s = engine_share(engine, step, torch.tensor([tokens[-1]]), L + len(tokens), spec["steps"])
        out["policies"][name] = {"prefill_s": prefill_s, "decode_ms": median_ms(times), "decode_times_s": times,
                                 "decode_cpu_s": cpu, "engine_ms": 1e3 * engine_s,
                                 "tokens": tokens, "kept_after_prefill": kept_len,
                                 "kept_positions": positions_by_head(kept)}
    # transformers' own decode (DynamicCache, sdpa) at the same kept length, in this venv (the same
    # call as the kvpress side, whose transformers still calls the argument past_key_values)
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        cache = DynamicCache()
        model(input_ids=ids[:, :n_kept], past_key_values=cache, use_cache=True, logits_to_keep=1)

        def hf_step(tok, pos):
            return model(input_ids=tok[:, None], past_key_values=cache, position_ids=torch.tensor([[pos]])).logits[:, -1]

        tok = torch.tensor([1])
        times, cpu, _ = timed_decode(hf_step, tok, L, spec["warmup"], spec["steps"])
    out["hf_dynamic_ms"], out["hf_dynamic_cpu_ms"] = median_ms(times), median_ms(cpu)
    return out


def engine_share(engine, step, tok: torch.Tensor, start_pos: int, steps: int) -> float:
    """Median CPU seconds per decode step spent inside `engine.attend` (all layers)."""
    attend, spent = engine.attend, [0.0]

    def timed_attend(*args, **kwargs):
        c0 = time.thread_time()
        try:
            return attend(*args, **kwargs)
        finally:
            spent[0] += time.thread_time() - c0

    engine.attend = timed_attend  # an instance attribute: this engine only, removed below
    per_step = []
    try:
        for i in range(steps):
            spent[0] = 0.0
            tok = step(tok, start_pos + i).argmax(-1)
            per_step.append(spent[0])
    finally:
        del engine.attend
    return statistics.median(per_step)


# ---------------------------------------------------------------- driver
def prepare(workdir: Path, args) -> dict:
    """Draw the weights and the prompt once; both sides load them from `workdir`."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(LlamaConfig(**MODEL))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(workdir / "model.safetensors"))
    g = torch.Generator().manual_seed(args.seed + 1)
    prompt = torch.randint(0, MODEL["vocab_size"], (args.prompt_len,), generator=g).tolist()
    spec = {"prompt": prompt, "prompt_sha256": hashlib.sha256(json.dumps(prompt).encode()).hexdigest(),
            "keep": args.keep, "steps": args.steps, "warmup": args.warmup, "policies": args.policies,
            "prefill_chunk": args.prefill_chunk, "threads": args.threads}
    (workdir / "spec.json").write_text(json.dumps(spec))
    return spec


def kvpress_problem(python: str) -> str | None:
    """Why the kvpress side cannot run, or None."""
    if not Path(python).exists():
        return f"no kvpress interpreter at {python} (make bench-kvpress creates .venv-kvpress)"
    probe = subprocess.run([python, "-c", "import kvpress, torch; assert not torch.version.cuda, 'CUDA torch'"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
        return f"kvpress cannot be imported by {python}: {last}"
    return None


def run_round(kvpress_python: str, workdir: Path, round_idx: int, threads: int) -> tuple[dict, dict]:
    """Both sides as subprocesses, their timed decode blocks interleaved through `Gate` (one side runs
    at a time; the side that goes first alternates); returns (kvpress result, our result)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    sides = {"kvpress": kvpress_python, "ours": sys.executable}
    paths = {s: workdir / f"{s}_r{round_idx}.json" for s in sides}
    procs = {s: subprocess.Popen([py, str(Path(__file__).resolve()), "--side", s, "--workdir", str(workdir),
                                  "--out", str(paths[s]), "--protocol"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for s, py in sides.items()}
    try:
        state = {s: p.stdout.readline().strip() for s, p in procs.items()}
        turn = 0
        while all(v == "READY" for v in state.values()):
            for s in (("kvpress", "ours") if turn % 2 == 0 else ("ours", "kvpress")):
                procs[s].stdin.write("GO\n")
                procs[s].stdin.flush()
                state[s] = procs[s].stdout.readline().strip()  # blocks while s runs; the other waits
            turn += 1
        for s, p in procs.items():
            if p.wait(timeout=600) != 0:
                raise RuntimeError(f"the {s} side failed (exit {p.returncode}); its error is above")
        if any(state.values()):
            raise RuntimeError(f"the sides fell out of step: {state}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return json.loads(paths["kvpress"].read_text()), json.loads(paths["ours"].read_text())


def kept_agreement(a: list, b: list) -> tuple[bool, float]:
    """Exact equality of every (layer, head) set, and the mean overlap |A & B| / |A|."""
    equal, overlaps = True, []
    for la, lb in zip(a, b, strict=True):
        for ha, hb in zip(la, lb, strict=True):
            sa, sb = set(ha), set(hb)
            equal &= sa == sb
            overlaps.append(len(sa & sb) / max(len(sa), 1))
    return equal, sum(overlaps) / max(len(overlaps), 1)


def summarize(spec: dict, kv_runs: list[dict], our_runs: list[dict], wall_s: float) -> dict:
    for run in kv_runs + our_runs:
        if run["prompt_sha256"] != spec["prompt_sha256"]:
            raise RuntimeError(f"{run['side']} result was made for another prompt ({run['prompt_sha256'][:12]})")
    L = len(spec["prompt"])
    summary: dict = {"benchmark": "vs_kvpress", "prompt_len": L, "prompt_sha256": spec["prompt_sha256"],
                     "keep": spec["keep"], "n_kept": n_kept_for(L, spec["keep"]), "steps": spec["steps"],
                     "rounds": len(our_runs), "threads": spec["threads"], "model": MODEL,
                     "versions": {"ours": our_runs[0]["versions"], "kvpress": kv_runs[0]["versions"]}}
    rows = []
    for name in spec["policies"]:
        # median over every timed step of every round
        kv_ms = median_ms([t for r in kv_runs for t in r["policies"][name]["decode_times_s"]])
        our_ms = median_ms([t for r in our_runs for t in r["policies"][name]["decode_times_s"]])
        kv_cpu = median_ms([t for r in kv_runs for t in r["policies"][name]["decode_cpu_s"]])
        our_cpu = median_ms([t for r in our_runs for t in r["policies"][name]["decode_cpu_s"]])
        equal, overlap = kept_agreement(our_runs[0]["policies"][name]["kept_positions"],
                                        kv_runs[0]["policies"][name]["kept_positions"])
        kv_prefill = min(r["policies"][name]["prefill_s"] for r in kv_runs)
        our_prefill = min(r["policies"][name]["prefill_s"] for r in our_runs)
        first_equal = our_runs[0]["policies"][name]["tokens"][:1] == kv_runs[0]["policies"][name]["tokens"][:1]
        rows.append((name, kv_ms, our_ms, kv_cpu, our_cpu, kv_prefill, our_prefill, equal, overlap))
        summary[f"{name}_decode_ms_kvpress"] = round(kv_ms, 3)
        summary[f"{name}_decode_ms_ours"] = round(our_ms, 3)
        summary[f"{name}_decode_ms_ours_over_kvpress"] = round(our_ms / kv_ms, 4)
        summary[f"{name}_decode_cpu_ms_kvpress"] = round(kv_cpu, 3)
        summary[f"{name}_decode_cpu_ms_ours"] = round(our_cpu, 3)
        summary[f"{name}_decode_cpu_ms_ours_over_kvpress"] = round(our_cpu / kv_cpu, 4)
        summary[f"{name}_prefill_s_kvpress"] = round(kv_prefill, 3)
        summary[f"{name}_prefill_s_ours"] = round(our_prefill, 3)
        summary[f"{name}_kept_sets_equal"] = equal
        summary[f"{name}_kept_overlap"] = round(overlap, 5)
        summary[f"{name}_first_token_equal"] = first_equal
    if "streaming_llm" in spec["policies"]:
        summary["decode_ms_ours_over_kvpress_10pct"] = summary["streaming_llm_decode_ms_ours_over_kvpress"]
        summary["decode_cpu_ms_ours_over_kvpress_10pct"] = summary["streaming_llm_decode_cpu_ms_ours_over_kvpress"]
        summary["streaming_kept_sets_equal"] = summary["streaming_llm_kept_sets_equal"]
    for name in spec["policies"]:
        summary[f"{name}_engine_cpu_ms_ours"] = round(statistics.median(r["policies"][name]["engine_ms"]
                                                                        for r in our_runs), 3)
    summary["hf_dynamic_ms_ours_venv"] = round(statistics.median(r["hf_dynamic_ms"] for r in our_runs), 3)
    summary["hf_dynamic_cpu_ms_ours_venv"] = round(statistics.median(r["hf_dynamic_cpu_ms"] for r in our_runs), 3)
    summary["wall_s"] = round(wall_s, 1)
    print(f"\nnatsbench vs kvpress: Llama 4x512 (8 KV heads x 64), fp32, cpu, {spec['threads']} thread(s), prompt {L}, "
          f"{summary['n_kept']} kept ({spec['keep']:g}), median of {spec['steps']} steps x {len(our_runs)} round(s)")
    print(f"{'policy':<15}{'kvpress ms':>11}{'ours ms':>9}{'ours/kv':>9}{'kv cpu ms':>10}{'our cpu ms':>11}"
          f"{'cpu ours/kv':>12}{'kv prefill s':>13}{'our prefill s':>14}{'kept equal':>11}{'overlap':>9}")
    for name, kv_ms, our_ms, kv_cpu, our_cpu, kv_p, our_p, equal, overlap in rows:
        print(f"{name:<15}{kv_ms:>11.2f}{our_ms:>9.2f}{our_ms / kv_ms:>9.3f}{kv_cpu:>10.2f}{our_cpu:>11.2f}"
              f"{our_cpu / kv_cpu:>12.3f}{kv_p:>13.2f}{our_p:>14.2f}{str(equal):>11}{overlap:>9.4f}")
    print("of our step, inside the KV engine (append, attention, eviction; cpu ms): "
          + ", ".join(f"{n} {summary[f'{n}_engine_cpu_ms_ours']:.2f}" for n in spec["policies"]))
    print(f"transformers' own DynamicCache decode at {summary['n_kept']} tokens in our venv (transformers "
          f"{summary['versions']['ours']['transformers']}): {summary['hf_dynamic_ms_ours_venv']:.2f} ms "
          f"(cpu {summary['hf_dynamic_cpu_ms_ours_venv']:.2f} ms)")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2048-token prompt, 32 timed steps (<= 3 minutes)")
    ap.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default 8192; 2048 with --quick)")
    ap.add_argument("--keep", type=float, default=0.1, help="fraction of the prompt kept (kvpress ratio = 1 - keep)")
    ap.add_argument("--steps", type=int, default=None, help="timed decode steps per policy (default 64; 32 quick)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds (a fresh pair of side processes each; within one the sides' timed blocks alternate)")
    ap.add_argument("--prefill-chunk", type=int, default=512, help="our engine's prefill chunk")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated subset of {POLICIES}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kvpress-python", default=str(ROOT / ".venv-kvpress" / "bin" / "python"))
    ap.add_argument("--workdir", default=None, help="folder for the weights, prompt and per-side JSON (default: temp)")
    ap.add_argument("--side", choices=("kvpress", "ours"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--protocol", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.side:  # one side, in its own interpreter
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        workdir = Path(args.workdir)
        spec = json.loads((workdir / "spec.json").read_text())
        gate = Gate()
        if args.protocol:  # stdout carries only READY lines; anything else printed goes to stderr
            gate = Gate(os.fdopen(os.dup(sys.stdout.fileno()), "w"))
            sys.stdout = sys.stderr
        result = (kvpress_side if args.side == "kvpress" else ours_side)(spec, workdir, gate)
        result["prompt_sha256"] = hashlib.sha256(json.dumps(spec["prompt"]).encode()).hexdigest()
        Path(args.out).write_text(json.dumps(result))
        return 0
    if not 0 < args.keep < 1:
        ap.error(f"--keep must be a fraction in (0, 1), got {args.keep}")
    for field, value, lo in (("--threads", args.threads, 1), ("--warmup", args.warmup, 0),
                             ("--prefill-chunk", args.prefill_chunk, 1)):
        if value < lo:
            ap.error(f"{field} must be an int >= {lo}, got {value}")
    args.policies = [p for p in args.policies.split(",") if p]
    if not args.policies or any(p not in POLICIES for p in args.policies):
        ap.error(f"--policies must be a comma-separated subset of {POLICIES}, got {','.join(args.policies)!r}")
    args.prompt_len = args.prompt_len or (2048 if args.quick else 8192)
    args.steps = args.steps or (32 if args.quick else 64)
    if n_kept_for(args.prompt_len, args.keep) <= SNAP_WINDOW:
        ap.error(f"--prompt-len x --keep must keep more than the SnapKV window ({SNAP_WINDOW}) tokens")
    problem = kvpress_problem(args.kvpress_python)
    if problem:
        print(f"vs_kvpress: skipped: {problem}")
        print(json.dumps({"benchmark": "vs_kvpress", "skipped": problem}))
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vs_kvpress-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        spec = prepare(workdir, args)
        kv_runs, our_runs = [], []
        for r in range(args.rounds):
            kv, ours = run_round(args.kvpress_python, workdir, r, args.threads)
            kv_runs.append(kv)
            our_runs.append(ours)
        summary = summarize(spec, kv_runs, our_runs, time.perf_counter() - t0)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
