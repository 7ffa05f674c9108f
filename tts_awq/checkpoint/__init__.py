"""One checkpoint layer for every stage: resolve a source, read tensors lazily, write shards atomically."""

from tts_awq.checkpoint.atomic import atomic_output_dir
from tts_awq.checkpoint.files import copy_tree, list_files, read_json, sha256_file, write_json
from tts_awq.checkpoint.layout import Layout, detect_layout
from tts_awq.checkpoint.source import ResolvedSource, resolve_source
from tts_awq.checkpoint.store import TensorStore
from tts_awq.checkpoint.writer import ShardedWriter

__all__ = [
    "Layout",
    "ResolvedSource",
    "ShardedWriter",
    "TensorStore",
    "atomic_output_dir",
    "copy_tree",
    "detect_layout",
    "list_files",
    "read_json",
    "resolve_source",
    "sha256_file",
    "write_json",
]
