"""Package facts measured from the files: size on disk vs the reference and bits per weight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tts_awq.checkpoint.files import list_files
from tts_awq.checkpoint.store import TensorStore
from tts_awq.provenance import PROVENANCE_NAME

VALIDATION_DIR = "validation"
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_PACKED = (".qweight", ".qzeros", ".scales")


def disk_bytes(root: Path) -> dict[str, int]:
    """Bytes per top-level entry (files and folders) of a model directory, symlinks followed; validation/ and
    provenance.json (which the validation itself edits) are left out."""
    sizes: dict[str, int] = {}
    for rel in list_files(root):
        top = rel.split("/", 1)[0]
        if top in (VALIDATION_DIR, PROVENANCE_NAME):
            continue
        sizes[top] = sizes.get(top, 0) + (Path(root) / rel).stat().st_size
    return dict(sorted(sizes.items()))


def _nbytes(info: Any) -> int:
    return info.numel * _ITEMSIZE[info.dtype]


def weight_census(store: TensorStore) -> dict[str, Any]:
    """Logical parameters and stored bytes, split into INT4-packed linears and everything else."""
    infos = store.infos()
    packed = sorted(name.removesuffix(".qweight") for name in infos if name.endswith(".qweight"))
    q_weights = 0
    q_bytes = 0
    for linear in packed:
        qweight = infos[f"{linear}.qweight"]
        q_weights += qweight.shape[0] * qweight.shape[1] * 8  # [in, out / 8] int32 -> in * out nibbles
        q_bytes += sum(_nbytes(infos[f"{linear}{suffix}"]) for suffix in _PACKED if f"{linear}{suffix}" in infos)
    other = [i for n, i in infos.items() if not n.endswith(_PACKED)]
    other_params = sum(i.numel for i in other)
    other_bytes = sum(_nbytes(i) for i in other)
    dtypes: dict[str, int] = {}
    for info in other:
        dtypes[info.dtype] = dtypes.get(info.dtype, 0) + info.numel
    return {
        "quantized_linears": len(packed),
        "quantized_weights": q_weights,
        "quantized_bytes": q_bytes,
        "bits_per_weight_quantized": (8 * q_bytes / q_weights) if q_weights else None,
        "other_params": other_params,
        "other_bytes": other_bytes,
        "other_dtypes": dict(sorted(dtypes.items())),
        "total_params": q_weights + other_params,
        "total_bytes": q_bytes + other_bytes,
        "bits_per_param_overall": 8 * (q_bytes + other_bytes) / max(q_weights + other_params, 1),
        "_packed_names": packed,
    }


def facts(package_root: Path, reference_root: Path, package_store: TensorStore, reference_store: TensorStore,
          quantization_config: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    pkg_disk = disk_bytes(package_root)
    ref_disk = disk_bytes(reference_root)
    pkg = weight_census(package_store)
    ref = weight_census(reference_store)
    names = pkg.pop("_packed_names")
    ref.pop("_packed_names")
    ref_infos = reference_store.infos()
    dense = [ref_infos[f"{n}.weight"] for n in names if f"{n}.weight" in ref_infos]
    ref_linear_bytes = sum(_nbytes(i) for i in dense)
    ref_linear_weights = sum(i.numel for i in dense)
    pkg_total = sum(pkg_disk.values())
    ref_total = sum(ref_disk.values())
    return {
        "quantization_config": quantization_config,
        "disk_bytes": pkg_total,
        "disk_bytes_by_entry": pkg_disk,
        "reference_disk_bytes": ref_total,
        "reference_disk_bytes_by_entry": ref_disk,
        "disk_ratio": pkg_total / ref_total if ref_total else None,
        "weights": pkg,
        "reference_weights": ref,
        "quantized_linears_reference_bits_per_weight": (8 * ref_linear_bytes / ref_linear_weights)
        if ref_linear_weights else None,
        "quantized_linears_compression": (ref_linear_bytes / pkg["quantized_bytes"])
        if pkg["quantized_bytes"] and ref_linear_bytes else None,
        "load": load,  # wall time and memory: machine-dependent, not deterministic
    }
