"""Reproduce a CPU without AVX-512 on one that has it: PyTorch and oneDNN held to AVX2 kernels.

The machines convforge is measured on differ from day to day (AVX-512 with bf16 and VNNI, or AVX2
only). `--avx2` in a benchmark re-executes it with ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2,
which torch reads when it is imported; `resolve_amp` then also treats bf16 as slow, as on such a CPU.
The hardware line (convforge.runs.describe_hardware) says when kernels were held.
"""

from __future__ import annotations

import os
import sys

AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def hold_to_avx2(enabled: bool) -> None:
    """Re-execute this script with AVX2-only kernels (once; a no-op when already held or not asked)."""
    if enabled and os.environ.get("ONEDNN_MAX_CPU_ISA") != AVX2_ONLY["ONEDNN_MAX_CPU_ISA"]:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ONLY})
