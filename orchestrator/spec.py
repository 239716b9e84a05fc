"""The sweep file: a validated description of models x policies x workloads x seeds.

A sweep file (YAML or JSON) looks like::

    name: smoke
    models:
      - {name: random:tiny-gpt, dtype: float32, device: cpu}
    policies:
      - {name: full}
      - {name: streaming_llm, params: {budget: [0.1, 0.5]}}
      - {name: h2o, compress: [streaming, prompt], params: {budget: 0.25}}
    workloads:
      - {name: passkey, params: {context_length: [256, 512]}, examples: 4}
    seeds: [0]
    resources: {workers: 2, gpus_per_worker: 0}

A list in `params` is a grid axis (the cells take its product); a scalar is fixed. A policy's
`compress` (the compression protocol: streaming, prompt or context; default the policy's own) is
an axis the same way: one value or a list, each one the policy must support. Every
problem is reported with its field path (`policies[1].params.budget[0]`) and, where the set is
closed, the allowed values; `load_spec` raises `SpecError` before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.declaration import DEVICES, DTYPES, check_config_field, check_device

__all__ = ["DEVICES", "DTYPES", "SpecError", "SweepSpec", "grid", "load_spec", "parse_spec"]


class SpecError(ValueError):
    """A sweep file that cannot run: `problems` holds one "path: message" line per fault."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid sweep file {source}:\n" + "\n".join(f"  {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSpec(_Strict):
    """One model to load: a reference-model name (models/<name>), a folder path, or a
    test model name such as `random:tiny-gpt`; `dtype` and `device` say how to load it;
    `adapter`: a NAtS scorer adapter folder for a Hugging Face model (checked against the
    base before anything runs; its cells carry its path and content hash)."""

    name: str = Field(min_length=1, max_length=500)  # runs.model is VARCHAR(500)
    dtype: str = "float32"
    device: str = "cpu"
    adapter: str | None = Field(default=None, min_length=1)


class PolicySpec(_Strict):
    """One KV policy with its parameter grid (lists are grid axes); `budget` is the kept
    fraction of the KV cache, in (0, 1]."""

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    # The compression protocol(s) (services.declaration.PROTOCOLS): one value or a list (a grid axis);
    # None: the policy's default_protocol. Each must be one of the policy's `protocols`.
    compress: str | list[str] | None = None
    # Restrict the policy to these model names (default: every model of the sweep). The demo
    # runs `nats` only on the models that have NAtS scorers.
    models: list[str] | None = None

    def compress_values(self) -> list[str | None]:
        """The protocols of this entry's cells (None: the policy's default)."""
        return _axis(self.compress)


class WorkloadSpec(_Strict):
    """One workload with its parameter grid and the number of examples per cell."""

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    examples: int = Field(default=8, ge=1)
    # Restrict the workload to these model names (default: every model of the sweep). The demo
    # runs a task workload only on the models whose full cache solves it.
    models: list[str] | None = None


class ResourceSpec(_Strict):
    """How many `PolicyWorker` actors run at once and what each one reserves."""

    workers: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0.0, ge=0.0)
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    max_attempts: int = Field(default=3, ge=1)


class SweepSpec(_Strict):
    """A whole sweep: its unique name, what to cross, and the resources to use."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")  # sweeps.name is VARCHAR(200)
    models: list[ModelSpec] = Field(min_length=1)
    policies: list[PolicySpec] = Field(min_length=1)
    workloads: list[WorkloadSpec] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)

    def digest(self) -> str:
        """sha256 of the canonical JSON of the spec (stable across key order; a policy without
        `compress` digests as it did before the field existed)."""
        data = self.model_dump(mode="json")
        for policy in data["policies"]:
            if policy.get("compress") is None:
                policy.pop("compress", None)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        path = _path(tuple(err["loc"]))
        kind = err["type"]
        if kind == "missing":
            msg = "required field is missing"
        elif kind == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        else:
            msg = f"{err['msg']} (got {err.get('input')!r})"
        problems.append(f"{path}: {msg}")
    return problems


def _policy_names() -> list[str]:
    from nats_model import policies

    return sorted(policies.available())


def _workload_names() -> list[str]:
    from services import workloads

    return sorted(workloads.available())


def _axis(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _check_compress(i: int, p: PolicySpec, spec: SweepSpec, problems: list[str]) -> None:
    """Every `compress` value is a protocol the policy supports, and "context" meets only workloads
    whose instances have a context/question split."""
    from services import workloads
    from services.declaration import check_compress

    raw = p.compress
    if isinstance(raw, list) and not raw:
        problems.append(f"policies[{i}].compress: an empty list gives no cells; give one or more protocols")
        return
    for j, value in enumerate(p.compress_values()):
        where = f"policies[{i}].compress" + (f"[{j}]" if isinstance(raw, list) else "")
        try:
            check_compress(p.name, value, where)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if value != "context":
            continue
        for k, w in enumerate(spec.workloads):
            known = w.name in workloads.available()
            if known and not getattr(workloads.get(w.name), "context_split", True):
                problems.append(f"{where}: workload {w.name!r} (workloads[{k}]) has no question after its context; "
                                "compress='context' needs one (allowed here: streaming, prompt)")


def _check_budgets(path: str, params: dict[str, Any], problems: list[str]) -> None:
    if "budget" not in params:
        return
    raw = params["budget"]
    values = _axis(raw)
    if isinstance(raw, list) and not raw:
        problems.append(f"{path}.budget: an empty list gives no cells; give one or more numbers in (0, 1]")
    for i, b in enumerate(values):
        where = f"{path}.budget" + (f"[{i}]" if isinstance(raw, list) else "")
        if b is None:
            continue
        if isinstance(b, bool) or not isinstance(b, int | float):
            problems.append(f"{where}: must be a number in (0, 1] or null, got {b!r}")
        elif not 0.0 < float(b) <= 1.0:
            problems.append(f"{where}: must be in (0, 1] (the kept fraction of the KV cache), got {b!r}")


def _check_grid(path: str, params: dict[str, Any], problems: list[str]) -> None:
    for key, value in params.items():
        if isinstance(value, list) and not value:
            problems.append(f"{path}.{key}: an empty list gives no cells; give at least one value")


# At most this many cells a sweep file (the planner builds every cell config and run key in memory, and the
# validation builds each policy and workload grid point): a larger sweep is split into several files.
MAX_CELLS = 100_000


def grid_size(params: dict[str, Any]) -> int:
    """How many points `grid(params)` has, without building them."""
    n = 1
    for value in params.values():
        n *= len(value) if isinstance(value, list) else 1
    return n


def cell_count(spec: SweepSpec) -> int:
    """How many cells `plan.expand(spec)` gives (before duplicates are merged), without building them."""
    total = 0
    for m in spec.models:
        workloads = sum(grid_size(w.params) for w in spec.workloads if w.models is None or m.name in w.models)
        policies = sum(grid_size(p.params) * len(p.compress_values()) for p in spec.policies
                       if p.models is None or m.name in p.models)
        total += workloads * policies * len(spec.seeds)
    return total


def _check_size(spec: SweepSpec, problems: list[str]) -> bool:
    """False (with one problem) when the sweep expands to more than MAX_CELLS cells."""
    n = cell_count(spec)
    if n > MAX_CELLS:
        problems.append(f"<sweep>: expands to {n} cells (models x workload grids x policy grids x protocols x "
                        f"seeds); at most {MAX_CELLS} a sweep file: split it into several files")
        return False
    return True


def grid(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Product of the list-valued entries; scalars ride along. Keys keep the file's order."""
    keys = list(params)
    axes = [params[k] if isinstance(params[k], list) else [params[k]] for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]


def normalize_workload_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The given workload parameters as the workload's `validate` types them (`"128"`, `128.0`
    and `128` are one int), so equal cells hash to one run key; defaults are not added (the keys
    stay what the sweep file wrote). ValueError naming the parameter for a bad value."""
    from services import workloads

    validated = workloads.get(name).validate(dict(params))
    return {k: validated[k] for k in params}


def normalize_policy_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The given policy parameters typed by the policy dataclass's field annotations: an int
    for a float field becomes a float (`budget: 1` is `1.0`), an integral float for an int field
    an int; a non-integral number for an int field is a ValueError naming the parameter."""
    from nats_model import policies

    kinds = {f.name: {part.strip() for part in str(f.type).split("|")}
             for f in dataclasses.fields(policies.policy_class(name))}
    out: dict[str, Any] = {}
    for key, value in params.items():
        kind = kinds.get(key, set())
        if isinstance(value, bool) or not isinstance(value, int | float):
            out[key] = value
        elif "float" in kind and "int" not in kind:
            out[key] = float(value)
        elif "int" in kind and "float" not in kind and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"policy {name!r}: parameter {key!r} must be an integer, got {value!r}")
            out[key] = int(value)
        else:
            out[key] = value
    return out


def _check_policy_params(i: int, p: PolicySpec, problems: list[str]) -> None:
    """Build the policy once per grid combination: its own validator names bad fields/values."""
    from nats_model import policies

    seen: set[str] = set()
    for combo in grid(p.params):
        try:
            policies.build(p.name, **normalize_policy_params(p.name, combo))
        except (ValueError, TypeError) as exc:
            msg = f"policies[{i}].params: {exc}"
            if msg not in seen:
                seen.add(msg)
                problems.append(msg)


def _check_workload_params(i: int, w: WorkloadSpec, problems: list[str]) -> None:
    """Every grid combination through the workload's own validator (names, ranges, cross-checks)."""
    from services import workloads

    validate = getattr(workloads.get(w.name), "validate", None)
    if validate is None or any(isinstance(v, list) and not v for v in w.params.values()):
        return
    seen: set[str] = set()
    for combo in grid(w.params):
        try:
            validate(combo)
        except (ValueError, TypeError) as exc:
            msg = f"workloads[{i}].params: {exc}"
            if msg not in seen:
                seen.add(msg)
                problems.append(msg)


def _check_adapter(i: int, m: ModelSpec, problems: list[str]) -> None:
    """The adapter folder exists, is well formed and was made for this model (before any cell runs)."""
    from services.models import check_adapter_for_model

    try:
        check_adapter_for_model(m.name, m.adapter)
    except ValueError as exc:
        problems.append(f"models[{i}].adapter: {str(exc).splitlines()[0]}")


def _check_declared(field: str, value: Any, where: str, problems: list[str]) -> None:
    """A cell config field against services.declaration (e.g. the range its column holds)."""
    try:
        check_config_field(field, value, where)
    except ValueError as exc:
        problems.append(str(exc))


def _check_model_names(where: str, names: list[str] | None, spec: SweepSpec, problems: list[str]) -> None:
    """A `models` restriction names only models of the sweep."""
    model_names = [m.name for m in spec.models]
    for j, name in enumerate(names or []):
        if name not in model_names:
            problems.append(f"{where}.models[{j}]: unknown model {name!r}; allowed: the sweep's "
                            f"models {', '.join(model_names)}")


def check_semantics(spec: SweepSpec) -> list[str]:
    """Checks pydantic cannot do: registry names, budget ranges, dtypes, devices, duplicates."""
    problems: list[str] = []
    if not _check_size(spec, problems):  # before any per-grid-point check: those would build every point
        return problems
    for i, m in enumerate(spec.models):
        if m.dtype not in DTYPES:
            problems.append(f"models[{i}].dtype: unknown dtype {m.dtype!r}; allowed: {', '.join(DTYPES)}")
        try:
            check_device(m.device, f"models[{i}].device")
        except ValueError as exc:
            problems.append(str(exc))
        if m.adapter is not None:
            _check_adapter(i, m, problems)
    policy_names = _policy_names()
    for i, p in enumerate(spec.policies):
        if p.name not in policy_names:
            problems.append(
                f"policies[{i}].name: unknown policy {p.name!r}; allowed: {', '.join(policy_names)}"
            )
        _check_model_names(f"policies[{i}]", p.models, spec, problems)
        before = len(problems)
        _check_grid(f"policies[{i}].params", p.params, problems)
        _check_budgets(f"policies[{i}].params", p.params, problems)
        if p.name in policy_names and len(problems) == before:
            _check_policy_params(i, p, problems)
        if p.name in policy_names:
            _check_compress(i, p, spec, problems)
    workload_names = _workload_names()
    for i, w in enumerate(spec.workloads):
        if w.name not in workload_names:
            problems.append(
                f"workloads[{i}].name: unknown workload {w.name!r}; allowed: {', '.join(workload_names)}"
            )
        _check_model_names(f"workloads[{i}]", w.models, spec, problems)
        _check_grid(f"workloads[{i}].params", w.params, problems)
        if w.name in workload_names:
            _check_workload_params(i, w, problems)
    for i, w in enumerate(spec.workloads):
        _check_declared("n_examples", w.examples, f"workloads[{i}].examples", problems)
    for i, seed in enumerate(spec.seeds):
        _check_declared("seed", seed, f"seeds[{i}]", problems)
    if len(set(spec.seeds)) != len(spec.seeds):
        problems.append(f"seeds: duplicate seeds {spec.seeds}; give each seed once")
    return problems


def parse_spec(data: Any, source: str = "<spec>") -> SweepSpec:
    """Validate a decoded sweep document; raises `SpecError` listing every problem."""
    if not isinstance(data, dict):
        raise SpecError(source, [f"<root>: expected a mapping with name, models, policies, workloads; "
                                 f"got {type(data).__name__}"])
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, _pydantic_problems(exc)) from None
    problems = check_semantics(spec)
    if problems:
        raise SpecError(source, problems)
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file (.yaml/.yml/.json; `nats_model.config_files`: UTF-8, at most 1 MiB,
    one document, no key twice in a mapping); raises `SpecError`, one line per problem, for anything else."""
    from nats_model.config_files import ConfigFileError, read_config_file

    try:
        data = read_config_file(path)
    except ConfigFileError as exc:
        raise SpecError(str(path), [f"<file>: {exc}"]) from None
    try:
        return parse_spec(data, str(path))
    except RecursionError:
        raise SpecError(str(path), ["<file>: not a sweep: nested too deeply"]) from None
