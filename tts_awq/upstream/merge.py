"""Merge a base checkpoint with fine-tunes, one tensor at a time, with provenance.

Inputs are either all safetensors checkpoint directories (local or Hub ids) or all ``.pth``/``.pt`` files holding
(nested) state dicts such as Kokoro-82M's ``{'bert': {...}, 'bert_encoder': {...}, 'decoder': {...}}``.

- Directories: tensors are read lazily with :class:`TensorStore` and streamed into :class:`ShardedWriter`; every
  non-weight file of the base (config, tokenizer, ``speech_tokenizer/``...) is copied verbatim. OUT is a checkpoint
  directory.
- ``.pth`` files: loaded only with ``torch.load(..., weights_only=True)`` (a file that carries code is refused);
  nested dicts are flattened to dotted names for matching and rebuilt in the base's structure. OUT is a directory
  holding ``model.pth`` (``torch.save`` of the nested dict) and ``provenance.json``.

Weight-norm aliases (``X.weight_g``/``X.weight_v`` and ``X.parametrizations.weight.original0``/``original1``) are
matched across models and written back in the base's spelling. Note that g and v are merged separately, which is
not the same as merging the effective weight ``g * v / |v|``.

Example::

    from tts_awq.upstream.merge import merge_checkpoints
    merge_checkpoints("base_dir", [("ft_a", 0.6), ("ft_b", 1.0)], "out_dir", method="ties", density=0.5)
"""

from __future__ import annotations

import abc
import contextlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tts_awq.checkpoint import (
    ShardedWriter,
    TensorStore,
    atomic_output_dir,
    copy_tree,
    resolve_source,
    sha256_file,
)
from tts_awq.checkpoint.store import INDEX_NAME, WEIGHTS_NAME, require_finite
from tts_awq.constants import DEFAULT_SEED
from tts_awq.errors import UserError
from tts_awq.provenance import PROVENANCE_NAME, Provenance, describe_input
from tts_awq.upstream.merge_methods import MergeMethod, get_method, tensor_seed

PTH_SUFFIXES = (".pth", ".pt")
PTH_OUTPUT_NAME = "model.pth"
UNMATCHED_POLICIES = ("error", "drop", "keep:NAME")
_MAX_LISTED = 5

# Weight-norm spellings: legacy torch.nn.utils.weight_norm vs torch.nn.utils.parametrizations.weight_norm.
_LEGACY_G = re.compile(r"(^|\.)weight_g$")
_LEGACY_V = re.compile(r"(^|\.)weight_v$")


def canonical_name(name: str) -> str:
    """One spelling for weight-norm tensors: ``X.weight_g`` -> ``X.parametrizations.weight.original0`` (v -> 1)."""
    name = _LEGACY_G.sub(r"\1parametrizations.weight.original0", name)
    return _LEGACY_V.sub(r"\1parametrizations.weight.original1", name)


def parse_model_spec(text: str) -> tuple[str, float]:
    """``"path:0.6"`` -> ``("path", 0.6)``; without a ``:<number>`` suffix the weight is 1.0."""
    spec, sep, tail = text.rpartition(":")
    if sep and spec:
        try:
            return spec, float(tail)
        except ValueError:
            pass
    return text, 1.0


# ---------------------------------------------------------------------------------------------------------------
# Inputs: one small reader per format, both exposing canonical name -> own spelling, dtype/shape and get().
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Input(abc.ABC):
    role: str
    spec: str
    path: Path
    names: dict[str, str] = field(default_factory=dict)  # canonical -> own name

    def _index(self, own_names: list[str]) -> None:
        for own in own_names:
            canon = canonical_name(own)
            if canon in self.names:
                raise UserError(
                    f"{self.path}: both {self.names[canon]!r} and {own!r} are in the checkpoint (two spellings of one "
                    "weight-norm tensor); keep one spelling"
                )
            self.names[canon] = own

    @abc.abstractmethod
    def meta(self, canon: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """dtype and shape of a tensor, by canonical name."""

    @abc.abstractmethod
    def get(self, canon: str) -> torch.Tensor:
        """The tensor itself, by canonical name."""


class _DirInput(_Input):
    def __init__(self, role: str, spec: str, source: Any) -> None:
        super().__init__(role, spec, source.path)
        self.source = source
        self.store = TensorStore(source.path)
        self._index(self.store.keys())

    def meta(self, canon: str) -> tuple[torch.dtype, tuple[int, ...]]:
        info = self.store.info(self.names[canon])
        return info.torch_dtype, info.shape

    def get(self, canon: str) -> torch.Tensor:
        return self.store.get_finite(self.names[canon])


class _PthInput(_Input):
    def __init__(self, role: str, spec: str, path: Path) -> None:
        super().__init__(role, spec, path)
        self.tree = _load_pth(path)
        self.tensors: dict[str, torch.Tensor] = {}
        self.paths: dict[str, tuple[Any, ...]] = {}  # own dotted name -> key path in the nested dict
        self.leaves: list[tuple[tuple[Any, ...], Any]] = []  # every leaf in order (tensors and others)
        for key_path, value in _walk(self.tree, ()):
            self.leaves.append((key_path, value))
            if isinstance(value, torch.Tensor):
                dotted = ".".join(str(k) for k in key_path)
                if dotted in self.tensors:
                    raise UserError(f"{path}: two entries flatten to the same name {dotted!r}; rename one")
                self.tensors[dotted] = value
                self.paths[dotted] = key_path
        self._index(list(self.tensors))

    def meta(self, canon: str) -> tuple[torch.dtype, tuple[int, ...]]:
        t = self.tensors[self.names[canon]]
        return t.dtype, tuple(t.shape)

    def get(self, canon: str) -> torch.Tensor:
        tensor = self.tensors[self.names[canon]]
        require_finite(tensor, self.names[canon], self.path)
        return tensor


def _load_pth(path: Path) -> Any:
    try:
        tree = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure of the restricted unpickler means the file is unusable
        raise UserError(
            f"{path}: refused to load with torch.load(weights_only=True): {_why_refused(path, exc)}"
        ) from None
    if not isinstance(tree, Mapping):
        raise UserError(
            f"{path}: expected a (nested) dict of tensors, got {type(tree).__name__}; re-save a state dict"
        )
    return tree


def _why_refused(path: Path, exc: Exception) -> str:
    """Name the code a checkpoint references (read from the pickle opcodes, never executed) or the load error."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint, truncated...: fall back to the loader's error
        unsafe = []
    if unsafe:
        shown = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
        return (
            f"it references code or custom classes ({shown}); only plain (nested) dicts of tensors are accepted: "
            "re-save the state dict from a trusted environment"
        )
    text = str(exc).strip().splitlines()
    detail = f"{exc.__class__.__name__}: {text[0][:120]}" if text else exc.__class__.__name__
    return f"{detail}; the file may be truncated or not a torch checkpoint: re-download or re-save it"


def _walk(node: Any, prefix: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], Any]]:
    """Leaves of a nested dict as (key path, value); an empty dict is a leaf."""
    if isinstance(node, Mapping) and (node or not prefix):
        out: list[tuple[tuple[Any, ...], Any]] = []
        for key, value in node.items():
            out.extend(_walk(value, (*prefix, key)))
        return out
    return [(prefix, node)]


def _unflatten(leaves: list[tuple[tuple[Any, ...], Any]], where: Path) -> dict[Any, Any]:
    root: dict[Any, Any] = {}
    for key_path, value in leaves:
        node = root
        for key in key_path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise UserError(
                    f"{where}: {'.'.join(map(str, key_path))} clashes with a tensor of the same prefix"
                )
            node = child
        if key_path[-1] in node:
            raise UserError(
                f"{where}: {'.'.join(map(str, key_path))} written twice; inputs disagree on structure"
            )
        node[key_path[-1]] = value
    return root


def _is_pth(spec: str) -> bool:
    return str(spec).lower().endswith(PTH_SUFFIXES)


def _open_input(role: str, spec: str) -> _Input:
    if _is_pth(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"{path}: {role} .pth file not found; check the path")
        return _PthInput(role, str(spec), path.resolve())
    return _DirInput(role, str(spec), resolve_source(spec, what=role))


def _describe(inp: _Input) -> dict[str, Any]:
    if isinstance(inp, _DirInput):
        return describe_input(inp.role, inp.source, inp.path)
    return {
        "role": inp.role,
        "spec": inp.spec,
        "path": str(inp.path),
        "files_sha256": {inp.path.name: sha256_file(inp.path)},
    }


# ---------------------------------------------------------------------------------------------------------------
# Planning: which tensors to merge, which are unmatched and what happens to them.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    merged: list[str]  # canonical names merged across every input
    kept: dict[str, _Input]  # canonical name -> input the tensor is copied from (unmatched, keep policy)
    non_float: list[str]  # matched but not floating point: copied from the base
    unmatched: list[dict[str, Any]]  # provenance record for every unmatched name


def _keeper(policy: str, inputs: list[_Input]) -> _Input | None:
    if policy in ("error", "drop"):
        return None
    if policy.startswith("keep:"):
        name = policy[len("keep:") :]
        if name == "base":
            return inputs[0]
        for inp in inputs[1:]:
            if name in (inp.spec, str(inp.path)):
                return inp
        known = ", ".join(["base", *(inp.spec for inp in inputs[1:])])
        raise UserError(
            f"--unmatched {policy}: {name!r} is not an input; use keep:NAME with NAME one of {known}"
        )
    raise UserError(f"--unmatched {policy!r}: expected one of {', '.join(UNMATCHED_POLICIES)}")


def _plan(inputs: list[_Input], policy: str) -> _Plan:
    keeper = _keeper(policy, inputs)
    every = sorted(set().union(*(inp.names for inp in inputs)))
    merged, non_float, unmatched = [], [], []
    kept: dict[str, _Input] = {}
    for canon in every:
        present = [inp for inp in inputs if canon in inp.names]
        if len(present) < len(inputs):
            action = "dropped"
            if keeper is not None and keeper in present:
                kept[canon] = keeper
                action = f"kept from {keeper.role}"
            unmatched.append({"name": canon, "present_in": [inp.role for inp in present], "action": action})
            continue
        metas = [inp.meta(canon) for inp in inputs]
        shapes = {shape for _, shape in metas}
        if len(shapes) > 1:
            listing = ", ".join(
                f"{inp.role} {list(shape)}" for inp, (_, shape) in zip(inputs, metas, strict=True)
            )
            raise UserError(
                f"{canon}: shapes differ across inputs ({listing}); merge models of one architecture"
            )
        (non_float if not metas[0][0].is_floating_point else merged).append(canon)
    if unmatched and policy == "error":
        shown = "; ".join(
            f"{u['name']} (only in {', '.join(u['present_in'])})" for u in unmatched[:_MAX_LISTED]
        )
        more = f" and {len(unmatched) - _MAX_LISTED} more" if len(unmatched) > _MAX_LISTED else ""
        raise UserError(
            f"{len(unmatched)} tensors are not in every input: {shown}{more}; "
            "pass --unmatched drop or --unmatched keep:base (or keep:MODEL)"
        )
    if not merged and not non_float:
        raise UserError(
            "the inputs share no tensor name; check that they are checkpoints of one architecture"
        )
    return _Plan(merged, kept, non_float, unmatched)


def _resolve_params(
    method: MergeMethod, density: float | None, normalize: bool | None, seed: int
) -> dict[str, Any]:
    params = dict(method.params)
    if density is not None:
        if "density" not in params:
            raise UserError(f"--density does not apply to {method.name}; use it with ties or dare_linear")
        if not 0 < density <= 1:
            raise UserError(f"--density {density}: must be in (0, 1]")
        params["density"] = float(density)
    if normalize is not None:
        if "normalize" not in params:
            raise UserError(f"normalize does not apply to {method.name}; use it with linear or ties")
        params["normalize"] = bool(normalize)
    if "seed" in params:
        params["seed"] = int(seed)
    return params


# ---------------------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------------------


def merge_checkpoints(
    base: str | Path,
    models: list[tuple[str, float]],
    out: str | Path,
    method: str = "task_arithmetic",
    density: float | None = None,
    seed: int = DEFAULT_SEED,
    unmatched: str = "error",
    overwrite: bool = False,
    normalize: bool | None = None,
) -> Path:
    """Merge ``models`` (spec, weight) into ``base`` with ``method`` and write OUT atomically; returns OUT.

    ``density`` (ties, dare_linear; default 0.5) and ``normalize`` (linear, ties; default True) fall back to the
    method's defaults when ``None``; ``seed`` is used by dare_linear (per tensor: seed + crc32 of the name).
    ``unmatched`` decides what happens to tensors missing from some input: ``error``, ``drop`` or ``keep:NAME``
    (NAME = ``base`` or a model spec as given; names NAME lacks are dropped). Every unmatched name is listed in
    provenance. Floating tensors keep the base's dtype; non-float tensors (e.g. counters) are copied from the base.
    """
    if not models:
        raise UserError("merge needs at least one --model SPEC:WEIGHT")
    method_spec = get_method(method)
    params = _resolve_params(method_spec, density, normalize, seed)
    weights = [float(w) for _, w in models]
    for (spec, _), weight in zip(models, weights, strict=True):
        if not math.isfinite(weight):
            raise UserError(f"--model {spec}:{weight}: the weight is not finite; pass a number such as 0.6")
    if method == "linear" and params.get("normalize") and sum(weights) == 0:
        raise UserError("linear: the model weights sum to zero; change a weight or pass normalize=False")
    specs = [str(base), *(str(s) for s, _ in models)]
    pth = [_is_pth(s) for s in specs]
    if any(pth) and not all(pth):
        raise UserError("mix of .pth files and checkpoint directories; pass all inputs in one format")
    inputs = [_open_input("base", specs[0])] + [_open_input(f"model {s}", s) for s in specs[1:]]
    plan = _plan(inputs, unmatched)

    prov = Provenance(
        stage="merge",
        parameters={
            "method": method,
            "method_params": params,
            "base": specs[0],
            "models": [{"spec": s, "weight": w} for s, w in zip(specs[1:], weights, strict=True)],
            "density": params.get("density"),
            "seed": params.get("seed"),
            "unmatched": unmatched,
            "format": "pth" if pth[0] else "safetensors",
        },
    )
    for inp, weight in zip(inputs, [None, *weights], strict=True):
        entry = _describe(inp)
        if weight is not None:
            entry["weight"] = weight
        prov.inputs.append(entry)
    renamed = sorted(canon for canon in plan.merged if len({inp.names[canon] for inp in inputs}) > 1)
    prov.extra = {
        "tensors_merged": len(plan.merged),
        "unmatched_keys": plan.unmatched,
        "non_float_from_base": plan.non_float,
        "weight_norm_spellings_matched": renamed,
    }

    def merge_one(canon: str) -> torch.Tensor:
        if canon in plan.kept:
            return plan.kept[canon].get(canon)
        base_t = inputs[0].get(canon)
        if canon in plan.non_float:
            return base_t
        tensors = [inp.get(canon) for inp in inputs[1:]]
        call = dict(params)
        if "seed" in call:
            call["seed"] = tensor_seed(seed, canon)
        result = method_spec.fn(base_t, tensors, weights, **call)
        return result.to(base_t.dtype)

    names = [*plan.merged, *plan.non_float, *sorted(plan.kept)]
    sources = tuple(inp.path for inp in inputs)
    with atomic_output_dir(Path(out), overwrite, sources=sources, stage="merge") as tmp:
        with prov.timed("merge"):
            if pth[0]:
                _write_pth(tmp, inputs, names, plan, merge_one)
            else:
                _write_dir(tmp, inputs, names, plan, merge_one)
        prov.write(tmp)
    return Path(out).absolute()


def _own_name(canon: str, inputs: list[_Input], plan: _Plan) -> str:
    """The output name: the base's spelling when the base has the tensor, else the keeper's."""
    base = inputs[0]
    return base.names[canon] if canon in base.names else plan.kept[canon].names[canon]


def _write_dir(
    tmp: Path, inputs: list[_Input], names: list[str], plan: _Plan, merge_one: Callable[[str], torch.Tensor]
) -> None:
    base = inputs[0]
    assert isinstance(base, _DirInput)
    layout: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for canon in names:
        layout[_own_name(canon, inputs, plan)] = plan.kept.get(canon, base).meta(canon)
    writer = ShardedWriter(tmp, layout, metadata={"format": "pt"})
    try:
        for canon in names:
            writer.write(_own_name(canon, inputs, plan), merge_one(canon))
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        raise
    writer.close()
    weight_files = {*base.store.files, INDEX_NAME, WEIGHTS_NAME, PROVENANCE_NAME}
    copy_tree(base.path, tmp, skip=lambda rel: rel in weight_files or _is_top_level_weights(rel))


def _is_top_level_weights(rel: str) -> bool:
    """Top-level weight files of the base (stale after the merge), e.g. pytorch_model.bin or other shards."""
    return "/" not in rel and (
        rel.endswith((".safetensors", ".bin", ".pth", ".pt")) or rel.endswith(".safetensors.index.json")
    )


def _write_pth(
    tmp: Path, inputs: list[_Input], names: list[str], plan: _Plan, merge_one: Callable[[str], torch.Tensor]
) -> None:
    base = inputs[0]
    assert isinstance(base, _PthInput)
    wanted = set(names)
    leaves: list[tuple[tuple[Any, ...], Any]] = []
    for key_path, value in base.leaves:  # the base's structure and order; non-tensor leaves verbatim
        if isinstance(value, torch.Tensor):
            dotted = ".".join(str(k) for k in key_path)
            canon = canonical_name(dotted)
            if canon not in wanted:
                continue
            leaves.append((key_path, merge_one(canon)))
        else:
            leaves.append((key_path, value))
    for canon in sorted(plan.kept):
        keeper = plan.kept[canon]
        if canon not in base.names:
            assert isinstance(keeper, _PthInput)
            leaves.append((keeper.paths[keeper.names[canon]], merge_one(canon)))
    torch.save(_unflatten(leaves, tmp / PTH_OUTPUT_NAME), tmp / PTH_OUTPUT_NAME)
