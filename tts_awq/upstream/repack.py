"""Repack: give a Qwen3-TTS checkpoint that lacks ``speech_tokenizer/`` (e.g. Darwin-TTS-1.7B-Cross) the codec and
processor/tokenizer files of a base checkpoint whose talker has the same architecture.

Example::

    from tts_awq.upstream.repack import repack_codec
    repack_codec("FINAL-Bench/Darwin-TTS-1.7B-Cross", "Qwen/Qwen3-TTS-12Hz-1.7B-Base", "darwin-repacked")

The check and the copy live in :mod:`tts_awq.checkpoint.codec` (quantize-talker ``--codec-from`` uses them too).
"""

from __future__ import annotations

from pathlib import Path

from tts_awq.checkpoint import atomic_output_dir, copy_tree, resolve_source
from tts_awq.checkpoint.codec import copy_codec_into, plan_codec_copy
from tts_awq.checkpoint.source import CODEC_AND_PROCESSOR_FILES
from tts_awq.provenance import PROVENANCE_NAME, Provenance


def repack_codec(src: str | Path, codec_from: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write OUT = SRC plus BASE's codec and missing processor/tokenizer files; SRC and BASE are never modified.

    SRC and ``codec_from`` may be local directories or Hugging Face repo ids. OUT is built in a temp dir and
    renamed into place on success. provenance.json (stage ``repack``) records both inputs with sha256 and a
    ``files_from`` map ``{relative path: "src" | "codec_from"}``. Returns OUT.
    """
    src_res = resolve_source(src, what="SRC")
    base_res = resolve_source(codec_from, what="--codec-from BASE", allow_patterns=CODEC_AND_PROCESSOR_FILES)
    plan_codec_copy(src_res.path, base_res.path)  # fail before anything is written
    prov = Provenance(stage="repack", parameters={"src": str(src), "codec_from": str(codec_from)})
    with atomic_output_dir(Path(out), overwrite, sources=(src_res.path, base_res.path), stage="repack") as tmp:
        with prov.timed("copy"):
            from_src = copy_tree(src_res.path, tmp, skip=lambda rel: rel == PROVENANCE_NAME)
            from_base = copy_codec_into(tmp, base_res.path)
        prov.add_input("src", src_res, src_res.path)
        prov.add_input("codec_from", base_res, base_res.path)
        files_from = {rel: "src" for rel in from_src} | {rel: "codec_from" for rel in from_base}
        prov.extra = {"files_from": dict(sorted(files_from.items()))}
        prov.write(tmp)
    return Path(out).absolute()
