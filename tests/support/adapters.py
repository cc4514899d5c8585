"""PEFT LoRA adapters written by hand (no torch, no PEFT): adapter_config.json and adapter_model.safetensors with
the tensor names PEFT writes for a Llama's q_proj and v_proj."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

# tests/support/vllm_server.py's tiny Llama: hidden 128, 2 layers, 2 query and 2 key-value heads of 64.
TINY_LLAMA = {"hidden": 128, "layers": 2, "q_out": 128, "v_out": 128}


def write_safetensors(path: Path, tensors: dict[str, tuple[list[int], list[float]]],
                      metadata: dict[str, str] | None = None) -> None:
    """F32 tensors: name -> (shape, values)."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    data = bytearray()
    for name, (shape, values) in tensors.items():
        begin = len(data)
        data += struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [begin, len(data)]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data))


def write_lora(directory: Path, *, seed: int = 1, rank: int = 8, base_model: str | None = "tiny-llama",
               shape: dict[str, int] | None = None, scale: float = 0.5) -> Path:
    """A LoRA adapter of ``rank`` on q_proj and v_proj, its values drawn from ``seed``: adapters of different
    seeds change a greedy completion differently."""
    shape = shape or TINY_LLAMA
    directory.mkdir(parents=True, exist_ok=True)
    draw = random.Random(seed)
    tensors: dict[str, tuple[list[int], list[float]]] = {}
    for layer in range(shape["layers"]):
        for module, out in (("q_proj", shape["q_out"]), ("v_proj", shape["v_out"])):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = ([rank, shape["hidden"]],
                                                  [draw.gauss(0, scale) for _ in range(rank * shape["hidden"])])
            tensors[f"{prefix}.lora_B.weight"] = ([out, rank], [draw.gauss(0, scale) for _ in range(out * rank)])
    write_safetensors(directory / "adapter_model.safetensors", tensors)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
              "lora_dropout": 0.0, "bias": "none", "target_modules": ["q_proj", "v_proj"],
              "base_model_name_or_path": base_model, "fan_in_fan_out": False, "inference_mode": True}
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return directory
