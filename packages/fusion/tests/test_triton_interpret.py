"""Runs the Triton kernel cases on CPU through Triton's interpreter, in a subprocess.

``TRITON_INTERPRET=1`` only takes effect if it is set before triton is imported, and this pytest process may
already have imported triton (or may need the compiled path on a GPU), so the cases run in a fresh interpreter.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CASES = Path(__file__).with_name("triton_kernel_cases.py")
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_triton_kernels_under_interpreter():
    pytest.importorskip("triton", reason="triton is not installed (it is only a dependency on Linux)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("COFE_FUSION_BACKEND", None)
    cmd = [sys.executable, "-m", "pytest", str(CASES), "-q", "-rfEs", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=560)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"Triton kernel cases failed under TRITON_INTERPRET=1:\n{report}"
    summary = re.search(r"(\d+) passed", proc.stdout)
    assert summary and int(summary.group(1)) >= 20, f"too few kernel cases ran:\n{report}"
    assert "skipped" not in proc.stdout.splitlines()[-1], f"kernel cases were skipped:\n{report}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_kernels_compiled_on_gpu():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "COFE_FUSION_BACKEND")}
    cmd = [sys.executable, "-m", "pytest", str(CASES), "-q", "-rfEs", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, f"Triton kernel cases failed on the GPU:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"
