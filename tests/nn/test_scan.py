"""Every scan backend against a float64 step-by-step reference: outputs and gradients."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dynamicvis_cli.errors import BackendUnavailableError
from dynamicvis_cli.nn.scan import BACKENDS, resolve_backend, selective_scan
from dynamicvis_cli.nn.scan.chunked import selective_scan_chunked

from ..conftest import cpu_and_cuda

LENGTHS = [1, 2, 7, 64, 257, 1000]


def make_inputs(length: int, *, dtype: torch.dtype, device: str = "cpu", seed: int = 0,
                batch: int = 2, d_inner: int = 6, d_state: int = 16, gate: bool = True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    inputs = {
        "u": r(batch, d_inner, length),
        "delta": r(batch, d_inner, length),
        # A spread over the magnitudes trained Mamba layers have (decays from ~1 to ~exp(-50)).
        "A": -torch.exp(r(d_inner, d_state) * 1.5),
        "B": r(batch, d_state, length),
        "C": r(batch, d_state, length),
        "D": r(d_inner),
        "z": r(batch, d_inner, length) if gate else None,
        "delta_bias": r(d_inner) * 0.5,
    }
    return {k: (v.to(device=device, dtype=dtype) if v is not None else None) for k, v in inputs.items()}


def reference64(inputs: dict) -> torch.Tensor:
    wide = {k: (v.double().cpu() if v is not None else None) for k, v in inputs.items()}
    return BACKENDS["reference"](**wide, delta_softplus=True)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max() / b.double().abs().max().clamp_min(1e-30))


TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["chunked", "numba", "reference"])
def test_forward_matches_float64_reference(backend: str, dtype: torch.dtype, length: int) -> None:
    inputs = make_inputs(length, dtype=dtype)
    out = BACKENDS[backend](**inputs, delta_softplus=True)
    assert out.dtype == dtype and out.shape == inputs["u"].shape
    assert rel_err(out, reference64(inputs)) < TOL[dtype]


@pytest.mark.parametrize("chunk", [1, 3, 16, 999])
def test_chunked_any_chunk_length(chunk: int) -> None:
    inputs = make_inputs(100, dtype=torch.float64)
    out = selective_scan_chunked(**inputs, delta_softplus=True, chunk=chunk)
    assert rel_err(out, reference64(inputs)) < 1e-12


def test_chunked_without_optional_inputs() -> None:
    inputs = make_inputs(50, dtype=torch.float64, gate=False)
    inputs["D"] = None
    inputs["delta_bias"] = None
    inputs["delta"] = inputs["delta"].abs()  # without softplus, Δ must be positive already
    out = selective_scan_chunked(**inputs, delta_softplus=False)
    assert rel_err(out, BACKENDS["reference"](**inputs, delta_softplus=False)) < 1e-12


def test_bfloat16_inputs_are_scanned_in_float32() -> None:
    inputs = make_inputs(64, dtype=torch.bfloat16)
    for backend in ("chunked", "numba"):
        out = BACKENDS[backend](**inputs, delta_softplus=True)
        assert out.dtype == torch.bfloat16
        assert rel_err(out, reference64(inputs)) < 2e-2


@pytest.mark.parametrize("length", [1, 7, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_gradients_match_reference(length: int, dtype: torch.dtype) -> None:
    base = make_inputs(length, dtype=dtype, seed=1)
    grads = {}
    for name in ("reference", "chunked"):
        leaves = {k: (v.detach().clone().requires_grad_(True) if v is not None else None)
                  for k, v in base.items()}
        out = BACKENDS[name](**leaves, delta_softplus=True)
        upstream = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
        (out * upstream).sum().backward()
        grads[name] = {k: v.grad for k, v in leaves.items() if v is not None}
    for key, ref in grads["reference"].items():
        assert rel_err(grads["chunked"][key], ref) < TOL[dtype] * 10, key


def test_chunked_gradcheck_float64() -> None:
    inputs = make_inputs(9, dtype=torch.float64, batch=1, d_inner=2, d_state=3, seed=2)
    order = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = [inputs[k].requires_grad_(True) for k in order]

    def f(*args: torch.Tensor) -> torch.Tensor:
        return selective_scan_chunked(*args, delta_softplus=True, chunk=4)

    assert torch.autograd.gradcheck(f, leaves)


def test_auto_dispatch_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_backend("auto", device=cpu, needs_grad=False) == "numba"
    assert resolve_backend("auto", device=cpu, needs_grad=True) == "chunked"
    inputs = make_inputs(20, dtype=torch.float32)
    inputs["u"].requires_grad_(True)
    out = selective_scan(**inputs, delta_softplus=True)  # picks chunked: gradients flow
    out.sum().backward()
    assert inputs["u"].grad is not None


@pytest.mark.parametrize(
    ("backend", "needs_grad", "message"),
    [("numba", True, "no backward"), ("mamba_ssm", False, "CUDA"), ("nope", False, "unknown")],
)
def test_explicit_backend_that_cannot_run_says_why(backend: str, needs_grad: bool, message: str) -> None:
    with pytest.raises(BackendUnavailableError, match=message):
        resolve_backend(backend, device=torch.device("cpu"), needs_grad=needs_grad)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("length", [1, 7, 257, 2048])
def test_mamba_ssm_matches_reference_on_cuda(length: int) -> None:
    pytest.importorskip("mamba_ssm")
    inputs = make_inputs(length, dtype=torch.float32, device="cuda")
    out = BACKENDS["mamba_ssm"](**inputs, delta_softplus=True)
    assert rel_err(out, reference64(inputs)) < 1e-5


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_chunked_runs_on_every_device(device: str) -> None:
    inputs = make_inputs(33, dtype=torch.float32, device=device)
    out = selective_scan_chunked(**inputs, delta_softplus=True)
    assert out.device.type == device
    assert rel_err(out, reference64(inputs)) < 1e-5


def test_numba_kernel_uses_workqueue_with_torch_thread_count() -> None:
    # a fresh process: the threading layer is chosen once per process, at numba's first launch
    code = (
        "import torch, numba\n"
        "from dynamicvis_cli.nn.scan import selective_scan\n"
        "torch.set_num_threads(1)\n"
        "u, d = torch.randn(1, 4, 16), torch.rand(1, 4, 16)\n"
        "A, B, C = -torch.rand(4, 3), torch.randn(1, 3, 16), torch.randn(1, 3, 16)\n"
        "selective_scan(u, d, A, B, C, backend='numba')\n"
        "print(numba.threading_layer(), numba.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["workqueue", "1"]
