"""``search_state.safetensors``: what the AWQ search chose, so a package can be rebuilt without calibration.

Per decoder layer, one float32 vector per scale group, named after the group's ``prev`` module
(``talker.model.layers.3.scales.input_layernorm``), and the clip maxima of each clipped Linear, ``[out,
in / group_size]`` (``talker.model.layers.3.clip.mlp.down_proj``). The safetensors metadata holds the format
version, the options the numbers depend on (bits, group size, method, duo scaling, grid, clip, the Linears kept
dense), the tool version that wrote it (``producer``), the sha256 of the source files searched (``source_sha256``:
the weight files and config.json) and ``sha256``, the checksum of the tensors and every other metadata entry
(:func:`tts_awq.checkpoint.record.digest`). A state whose checksum fails, whose scales are not finite and
positive, or (in requantize) whose sources differ from SRC's is refused. The file is always written: a ``--method
rtn`` package (no scales, no clip) holds the metadata only, which is all
:func:`tts_awq.quantize.requantize.requantize` needs to rebuild it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tts_awq.checkpoint.record import PRODUCER, digest
from tts_awq.checkpoint.store import read_safetensors_header
from tts_awq.checkpoint.writer import ShardedWriter
from tts_awq.errors import UserError

SEARCH_STATE_NAME = "search_state.safetensors"
FORMAT_VERSION = 2  # 2: sealed with sha256 and the source hashes
SCALES = "scales."
CLIP = "clip."
CODES = "codes."
SHA256 = "sha256"


def pack_codes(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[out, in]`` (0..15) -> two per byte ``[out, in / 2]``: column ``2i`` low nibble, ``2i+1`` high."""
    q = q.detach().cpu().to(torch.uint8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_codes`."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def layer_state(scales: dict[str, torch.Tensor], clips: dict[str, torch.Tensor],
                codes: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One layer's state, names relative to the layer: ``scales.<prev>`` and ``clip.<linear>`` (float32, CPU) and,
    for error-compensated rounding, ``codes.<linear>`` (the chosen integer codes, two per byte)."""
    state = {f"{SCALES}{prev}": s.detach().float().cpu().contiguous() for prev, s in scales.items()}
    for linear, max_val in clips.items():
        state[f"{CLIP}{linear}"] = max_val.detach().float().cpu().reshape(max_val.shape[0], -1).contiguous()
    for linear, q in (codes or {}).items():
        state[f"{CODES}{linear}"] = pack_codes(q)
    return state


def split_layer_state(state: dict[str, torch.Tensor]
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Inverse of :func:`layer_state`: (scales by prev, clip maxima by linear, codes ``[out, in]`` by linear)."""
    scales = {k.removeprefix(SCALES): v for k, v in state.items() if k.startswith(SCALES)}
    clips = {k.removeprefix(CLIP): v for k, v in state.items() if k.startswith(CLIP)}
    codes = {k.removeprefix(CODES): unpack_codes(v) for k, v in state.items() if k.startswith(CODES)}
    return scales, clips, codes


def source_sha256(files_sha256: Mapping[str, str], weight_files: Collection[str]) -> dict[str, str]:
    """What a search state depends on of its source: the weight files and config.json (sha256 by name)."""
    return {rel: files_sha256[rel] for rel in sorted({*weight_files, "config.json"}) if rel in files_sha256}


def state_metadata(options: Any, layer_prefix: str, num_layers: int, keep_bf16: Collection[str],
                   sources: Mapping[str, str]) -> dict[str, str]:
    """The safetensors metadata (strings only): ``options`` is the run's :class:`AwqOptions`, ``sources`` the
    :func:`source_sha256` of the checkpoint searched."""
    return {
        "producer": PRODUCER,
        "source_sha256": json.dumps(dict(sorted(sources.items()))),
        "format": "tts-awq-search-state",
        "format_version": str(FORMAT_VERSION),
        "bits": str(options.bits),
        "group_size": str(options.group_size),
        "method": str(options.method),
        "duo_scaling": json.dumps(bool(options.duo_scaling)),
        "n_grid": str(options.n_grid),
        "clip": json.dumps(bool(options.clip)),
        "clip_tokens": str(options.clip_tokens),
        "layer_prefix": layer_prefix,
        "num_layers": str(num_layers),
        "keep_bf16": json.dumps(sorted(keep_bf16)),
    }


def write_search_state(out_dir: Path, layer_prefix: str, layers: dict[int, dict[str, torch.Tensor]],
                       metadata: dict[str, str]) -> dict[str, Any]:
    """Write ``out_dir/search_state.safetensors`` (deterministic bytes: sorted header, sorted metadata) and return
    its provenance entry."""
    tensors = {f"{layer_prefix}{index}.{rel}": t for index, state in layers.items() for rel, t in state.items()}
    metadata = {**{k: v for k, v in metadata.items() if k != SHA256}, SHA256: digest(tensors, {
        k: v for k, v in metadata.items() if k != SHA256})}
    plan = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    writer = ShardedWriter(out_dir, plan, metadata=metadata, max_shard_bytes=1 << 62, weights_name=SEARCH_STATE_NAME)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    writer.close()
    return {
        "file": SEARCH_STATE_NAME,
        "description": "AWQ search results per decoder layer: float32 scales per scale group "
                       f"({layer_prefix}N.{SCALES}<prev>) and clip maxima [out, in/group] per clipped linear "
                       f"({layer_prefix}N.{CLIP}<linear>), and with error-compensated rounding the chosen codes, "
                       f"two 4-bit codes per byte [out, in/2] ({layer_prefix}N.{CODES}<linear>); rebuild with "
                       "tts_awq.quantize.requantize",
        "tensor_count": len(tensors),
        "scale_vectors": sum(1 for n in tensors if f".{SCALES}" in n),
        "clip_tensors": sum(1 for n in tensors if f".{CLIP}" in n),
        "code_tensors": sum(1 for n in tensors if f".{CODES}" in n),
        "metadata": metadata,
    }


@dataclass(frozen=True)
class SearchState:
    metadata: dict[str, str]
    layers: dict[int, dict[str, torch.Tensor]]  # layer index -> names relative to the layer

    @property
    def keep_bf16(self) -> list[str]:
        return list(json.loads(self.metadata.get("keep_bf16", "[]")))

    @property
    def source_sha256(self) -> dict[str, str]:
        return dict(json.loads(self.metadata.get("source_sha256", "{}")))


def _check_values(path: Path, name: str, rel: str, tensor: torch.Tensor) -> None:
    """Scales must be finite and positive (a zero scale divides a norm by zero), clip maxima finite and >= 0."""
    positive = rel.startswith(SCALES)
    bad = ~torch.isfinite(tensor) | ((tensor <= 0) if positive else (tensor < 0))
    if bool(bad.any()):
        value = float(tensor.reshape(-1)[bad.reshape(-1).nonzero()[0, 0]])
        want = "finite and > 0" if positive else "finite and >= 0"
        raise UserError(f"{path}: tensor {name} holds {int(bad.sum())} value(s) that are not {want} (e.g. "
                        f"{value}); the state is damaged: use the package's original {SEARCH_STATE_NAME} or re-run "
                        "quantize-talker")


def read_search_state(path: Path) -> SearchState:
    """Read and verify a search_state file (one-line UserError if it is not one, fails its checksum or holds a
    scale that is not finite and positive)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; pass the {SEARCH_STATE_NAME} of a package written by quantize-talker")
    _, metadata = read_safetensors_header(path)
    if metadata.get("format") != "tts-awq-search-state":
        raise UserError(f"{path}: not a tts-awq {SEARCH_STATE_NAME} (no format metadata); pass the one a "
                        "quantize-talker package holds")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise UserError(f"{path}: search state format {metadata.get('format_version')!r} (without checksum and "
                        f"source hashes), this tts-awq reads {FORMAT_VERSION}; re-run quantize-talker to make one")
    prefix = metadata["layer_prefix"]
    tensors = load_file(str(path))
    fields = {k: v for k, v in metadata.items() if k != SHA256}
    if digest(tensors, fields) != metadata.get(SHA256):
        raise UserError(f"{path}: altered (its sha256 does not match its tensors and metadata); use the package's "
                        f"original {SEARCH_STATE_NAME} or re-run quantize-talker")
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        index, _, rel = name.removeprefix(prefix).partition(".")
        if not name.startswith(prefix) or not index.isdigit() or not rel.startswith((SCALES, CLIP, CODES)):
            raise UserError(f"{path}: unexpected tensor {name}; the file was edited, use the package's original")
        if rel.startswith(CODES):
            if tensor.dtype != torch.uint8 or tensor.dim() != 2:
                raise UserError(f"{path}: tensor {name} is not a uint8 matrix of packed codes; the file was edited, "
                                "use the package's original")
        else:
            _check_values(path, name, rel, tensor)
        layers.setdefault(int(index), {})[rel] = tensor
    return SearchState(metadata=metadata, layers=layers)
