"""Where and in what precision a model runs: the device, autocast, whether this CPU has fast bf16.

On the ground floor (torch only) because training, evaluation, the CLI and deployment all ask."""

import os
from contextlib import nullcontext
from pathlib import Path

import torch

from convforge.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """auto (the GPU when there is one), cpu, cuda or cuda:N (for example cuda:LOCAL_RANK)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but this machine has no CUDA GPU; use --device cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), where autocast pays off.

    oneDNN capped below its bf16 instruction sets (ONEDNN_MAX_CPU_ISA=AVX2, say, to reproduce an
    AVX2-only machine) computes bf16 by conversion, slower than fp32, so the cap counts too."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if cap not in ("ALL", "DEFAULT", "") and "BF16" not in cap and "AMX" not in cap:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_vnni() -> bool:
    """True when the CPU has 8-bit dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX-INT8):
    where INT8 convolutions run at full speed and u8 x s8 products cannot saturate. Without them ONNX
    Runtime's INT8 kernels need weights quantized to 7 bits (`reduce_range`)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if cap not in ("ALL", "DEFAULT", "") and not any(isa in cap for isa in ("VNNI", "AVX512", "AMX")):
        return False  # held below VNNI (AVX2, SSE41) to reproduce an older machine
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for *training*: 'auto' picks bf16 where the hardware computes it natively
    (measured faster, see benchmarks/RESULTS.md), else full precision. Reported figures follow
    `resolve_inference_amp` instead."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise UserError("--amp fp16 needs a CUDA GPU; on the CPU use --amp bf16 or off")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else None


def resolve_inference_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for evaluation and prediction: the one precision rule. Every figure convforge
    reports for a model (eval, predict, train's validation and final test, prune, quantize, robust,
    the server's torch backend) is what the deployed float32 model computes, unless the user asks
    for another precision by name (then the output and the record say so). bf16 autocast moved
    probabilities by up to 0.3 points and flipped close classes against the exported ONNX model on
    an AVX-512 BF16 CPU, so "auto" is float32 here."""
    if amp in ("off", "auto", "fp32", "float32"):
        return None
    return resolve_amp(amp, device)


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """'float32', 'bfloat16' or 'float16': the precision a forward pass under `amp_dtype` ran in."""
    return "float32" if amp_dtype is None else str(amp_dtype).replace("torch.", "")


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    """Autocast to `amp_dtype` on `device`, or nothing for full precision."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)
