"""Rebuild a package's decoder layers from the source weights and its ``search_state.safetensors``, without
calibration: fold the saved scales, clamp to the saved clip maxima, quantize and pack, with the very functions
the quantize pass uses (:mod:`tts_awq.quantize.apply`, :func:`tts_awq.quantize.engine.pack_layer`), so the
tensors are byte-identical to the ones quantize-talker wrote (tested on the CPU). Folding and clamping are
elementwise float32 operations, exactly rounded on every device, and quantization always runs on the CPU, so a
package made on CUDA should rebuild bit for bit on the CPU too; that case has not been tested.
:func:`requantize_package` writes a whole package that way (``tts-awq requantize SRC STATE OUT``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from tts_awq.checkpoint import TensorStore, atomic_output_dir, detect_layout, resolve_source
from tts_awq.checkpoint.files import hash_tree, list_files, sha256_file
from tts_awq.checkpoint.layout import DECODER_LINEARS
from tts_awq.checkpoint.writer import DEFAULT_MAX_SHARD_BYTES
from tts_awq.errors import UserError
from tts_awq.quantize.apply import apply_clips, apply_scales
from tts_awq.quantize.decoder import DecoderRunner
from tts_awq.quantize.engine import AwqOptions, LayerResult, pack_layer, read_layer, relative_keep
from tts_awq.quantize.scale_groups import groups_for
from tts_awq.quantize.search_state import SearchState, read_search_state, split_layer_state


def options_of(state: SearchState) -> AwqOptions:
    """The AwqOptions a search state was made with (what packing needs: bits, group size, method)."""
    meta = state.metadata
    return AwqOptions(bits=int(meta["bits"]), group_size=int(meta["group_size"]), method=meta["method"],
                      duo_scaling=meta["duo_scaling"] == "true", clip=meta["clip"] == "true",
                      n_grid=int(meta["n_grid"]), clip_tokens=int(meta["clip_tokens"]))


def check_state_source(state: SearchState, where: Path, root: Path, files_sha256: dict[str, str]) -> None:
    """The state must have been searched on these very source files (weights and config.json, by sha256)."""
    recorded = state.source_sha256
    if not recorded:
        raise UserError(f"{where}: records no source hashes; re-run quantize-talker to make a complete search state")
    for rel, sha in sorted(recorded.items()):
        if files_sha256.get(rel) != sha:
            found = "missing" if rel not in files_sha256 else "a different file"
            raise UserError(f"{where}: made from another checkpoint ({rel} is {found} in {root}); pass the SRC the "
                            "package was quantized from")


def requantize(source_dir: str | Path, state_file: str | Path, device: torch.device | str = "cpu",
               source_files_sha256: dict[str, str] | None = None) -> Iterator[LayerResult]:
    """Yield each decoder layer's package tensors (names relative to the layer, as quantize-talker writes them:
    AWQ GEMM triples, the kept-dense Linears' ``.weight`` and the smoothed norms in their source dtype) rebuilt
    from ``source_dir``'s weights and ``state_file`` (refused when made from other source files;
    ``source_files_sha256``: the source's file hashes when the caller already has them)."""
    state = read_search_state(Path(state_file))
    root = resolve_source(str(source_dir)).path
    spec = detect_layout(root).decoder
    store = TensorStore(root)
    where = Path(state_file)
    if source_files_sha256 is None:
        present = set(list_files(root))  # names from the state file are only looked up, never opened blindly
        source_files_sha256 = hash_tree(root, [rel for rel in state.source_sha256 if rel in present])
    check_state_source(state, where, root, source_files_sha256)
    if state.metadata["layer_prefix"] != spec.layer_prefix or int(state.metadata["num_layers"]) != spec.num_layers:
        raise UserError(f"{where}: made for {state.metadata['num_layers']} layers under "
                        f"{state.metadata['layer_prefix']!r}, but {root} has {spec.num_layers} under "
                        f"{spec.layer_prefix!r}; pass the source the package was quantized from")
    keep = state.keep_bf16
    known = {n for i in range(spec.num_layers) for n in spec.linear_names(i)}
    if unknown := [n for n in keep if n not in known]:
        raise UserError(f"{where}: keeps {unknown[0]} dense, which {root} does not have; pass the package's source")
    options = options_of(state)
    runner = DecoderRunner(spec, device)
    for index in range(spec.num_layers):
        tensors = read_layer(store, spec, index)
        dtypes = {rel: t.dtype for rel, t in tensors.items()}
        layer = runner.build_layer(tensors, index)
        del tensors
        saved = state.layers.get(index, {})
        scales, clips, codes = split_layer_state(saved)
        kept = relative_keep(keep, spec, index)
        if stray := sorted(set(codes) - (set(DECODER_LINEARS) - kept)):
            raise UserError(f"{where}: layer {index} has codes for {stray[0]}, which is not a quantized Linear of "
                            "this package; use the package's original search state")
        groups = [g for g in groups_for(layer) if g.prev in scales]  # the quantize pass's order
        if extra := sorted(set(scales) - {g.prev for g in groups}):
            raise UserError(f"{where}: layer {index} has scales for {extra[0]}, not a scale group of this model")
        with torch.no_grad():
            apply_scales(layer, [(g, scales[g.prev]) for g in groups])
            apply_clips(layer, clips)
        weights = dict(layer.state_dict())
        del layer
        tensors_out = pack_layer(weights, dtypes, options, kept, codes)
        yield LayerResult(index=index, tensors=tensors_out, stats={}, state=saved)


def requantize_package(src: str, state_file: str | Path, out: Path, overwrite: bool = False,
                       codec_from: str | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                       device: str = "cpu") -> Path:
    """``tts-awq requantize SRC STATE OUT``: a whole package from SRC and a search state, no calibration. Every
    file but provenance.json equals the package the state came from (same SRC, same ``--max-shard-size``)."""
    from tts_awq.checkpoint.source import CODEC_AND_PROCESSOR_FILES
    from tts_awq.provenance import Provenance, input_hashes
    from tts_awq.quantize.reassemble import PackageWriter, module_census

    state_path = Path(state_file)
    state = read_search_state(state_path)
    options = options_of(state)
    prov = Provenance(stage="quantize-talker")  # the same kind of package: validate-awq and push take it
    source = resolve_source(src)
    layout = detect_layout(source.path)
    base = (resolve_source(codec_from, what="--codec-from", allow_patterns=CODEC_AND_PROCESSOR_FILES)
            if codec_from else None)
    if base is None or layout.has_codec:
        layout.require_codec()
    store = TensorStore(source.path)
    source_hashes = input_hashes(source.path)
    check_state_source(state, state_path, source.path, source_hashes)  # before anything is written
    sources = (source.path,) + ((base.path,) if base else ())
    with atomic_output_dir(out, overwrite, sources=sources, stage="quantize-talker") as tmp:
        package = PackageWriter(tmp, store, layout, options, max_shard_bytes, source_hashes)
        codec_files: list[str] = []
        if base is not None and not layout.has_codec:
            from tts_awq.checkpoint.codec import copy_codec_into

            codec_files = copy_codec_into(tmp, base.path)
        package.start_weights(state.keep_bf16)
        with prov.timed("write_kept_tensors"):
            package.write_kept_tensors()
        with prov.timed("requantize_layers"):
            for result in requantize(source.path, state_path, device, source_hashes):
                package.write_layer(result)
        with prov.timed("finish"):
            weight_files = package.finish()
        prov.parameters = {"awq": options.to_dict(), "group_size": options.group_size, "w_bit": options.bits,
                           "method": options.method, "zero_point": True, "version": "gemm",
                           "max_shard_bytes": max_shard_bytes}
        prov.add_input("source", source, source.path, source_hashes)
        if base is not None:
            prov.add_input("codec_from", base, base.path)
        prov.extra = {
            "requantized_from": {"search_state": str(state_path.resolve()), "sha256": sha256_file(state_path)},
            "modules": module_census(layout, package.kept, package.keep_bf16),
            "kept_bf16": {"names": package.keep_bf16, "reasons": "as in the search state"},
            "search_state": package.search_state_info,
            "files": {"copied_verbatim": package.copied, "codec_from_base": codec_files,
                      "weights_written": weight_files},
        }
        prov.write(tmp, device=device)
    return Path(out)
