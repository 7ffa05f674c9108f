"""The parent of an export: a quantize-talker package, checked as ``push`` checks it, its INT4 linears read as
the integers validate-awq measured (q, z, s per group) and as the dense weight our loader computes from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tts_awq.checkpoint import TensorStore, detect_layout
from tts_awq.checkpoint.arch import group_size
from tts_awq.checkpoint.layout import DECODER_LINEARS, Layout
from tts_awq.errors import UserError
from tts_awq.loading import int4_linear_names
from tts_awq.publish.package import Package, load_package
from tts_awq.quantize.pack import dequantize_gemm, unpack_gemm

AWQ_SUFFIXES = ("qweight", "qzeros", "scales")


@dataclass(frozen=True)
class Int4Weights:
    """One INT4 linear as integers: ``w[o, i] = scales[o, i // g] * (q[o, i] - zeros[o, i // g])``."""

    name: str
    q: torch.Tensor  # uint8 [out, in], 0..15
    zeros: torch.Tensor  # uint8 [out, in / g], 0..15
    scales: torch.Tensor  # float16 [out, in / g]
    group_size: int

    @property
    def out_features(self) -> int:
        return int(self.q.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.q.shape[1])


@dataclass
class ExportSource:
    """A checked package and the facts every format needs."""

    package: Package
    store: TensorStore
    layout: Layout
    group_size: int
    int4: list[str]  # decoder linears stored INT4 (module names)
    kept_dense: list[str]  # decoder linears a --keep-bf16 package stores dense

    @property
    def root(self) -> Path:
        return self.package.root

    @property
    def config(self) -> dict:  # type: ignore[type-arg]
        return self.package.config

    def int4_tensor_names(self) -> set[str]:
        return {f"{name}.{suffix}" for name in self.int4 for suffix in AWQ_SUFFIXES}

    def dense_tensor_names(self) -> list[str]:
        """Every tensor of the package that is not part of an INT4 triple, sorted."""
        packed = self.int4_tensor_names()
        return [name for name in self.store.keys() if name not in packed]

    def weights(self, name: str) -> Int4Weights:
        q, zeros = unpack_gemm(self.store.get(f"{name}.qweight"), self.store.get(f"{name}.qzeros"))
        scales = self.store.get(f"{name}.scales").t().contiguous()
        return Int4Weights(name, q, zeros, scales, self.group_size)

    def reference(self, name: str) -> torch.Tensor:
        """The dense float32 ``[out, in]`` weight our loader dequantizes (``(q - z) * s``, exact in float32)."""
        get = self.store.get
        return dequantize_gemm(get(f"{name}.qweight"), get(f"{name}.qzeros"), get(f"{name}.scales"), self.group_size)


def open_source(path: Path, allow_unvalidated: bool) -> ExportSource:
    """Check the package as push does (integrity, validation record); refuse an unvalidated or failed one unless
    ``allow_unvalidated``."""
    package = load_package(Path(path))
    if not package.validated and not allow_unvalidated:
        raise UserError(f"{package.root}: {package.validation_problem}; run `validate-awq {package.root} --reference "
                        "SRC` first, or pass --allow-unvalidated to export it (the export and its card then say so)")
    layout = detect_layout(package.root)
    qconfig = package.config.get("quantization_config") or {}
    if qconfig.get("quant_method") != "awq" or int(qconfig.get("bits", 4)) != 4:
        raise UserError(f"{package.root / 'config.json'}: quantization_config is not AWQ INT4; export takes a "
                        "quantize-talker package")
    size = group_size(package.config, str(package.root / "config.json"))
    int4 = int4_linear_names(layout.decoder, qconfig)
    every = [f"{layout.decoder.layer_prefix}{i}.{rest}" for i in range(layout.decoder.num_layers)
             for rest in DECODER_LINEARS]
    int4_set = set(int4)
    return ExportSource(package=package, store=TensorStore(package.root), layout=layout, group_size=size,
                        int4=int4, kept_dense=[name for name in every if name not in int4_set])
