"""The passes around the matching kernels, counted without a GPU: the finiteness check reads the
host once per call, the inverse norms are one reduction, and the mutual kernel's column buffer
is [M] (the column key order it relies on is checked against sorting)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from cleandift_deploy.kernels import _checks, api, cosine, match_dense

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
interpreted = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs a GPU or the triton interpreter",
)


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every tensor -> Python value conversion (each is a device sync on a GPU)."""
    reads: list[str] = []
    for name in ("__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, _f: Any = original, _n: str = name) -> Any:
            reads.append(_n)
            return _f(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    yield reads


def test_finiteness_is_one_reduction_each_and_one_host_read(
    host_reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    aminmax = torch.aminmax

    def counted(x: torch.Tensor, **kwargs: Any) -> Any:
        calls.append(x.numel())
        return aminmax(x, **kwargs)

    monkeypatch.setattr(torch, "aminmax", counted)
    a = torch.randn(3000, 700)  # 2.1M elements: the old check read the host 3 times for it
    b = torch.randn(500, 700).half()
    _checks.check_finite({"a": a, "b": b})
    assert host_reads == ["__bool__"] and calls == [a.numel(), b.numel()]
    b[7, 3] = float("inf")
    with pytest.raises(ValueError, match=r"^b contains NaN or Inf"):
        _checks.check_finite({"a": a, "b": b})
    a[2999, 699] = float("nan")
    with pytest.raises(ValueError, match=r"^a contains NaN or Inf"):
        _checks.check_finite({"a": a, "b": b})
    big = torch.full((4, 4), torch.finfo(torch.bfloat16).max, dtype=torch.bfloat16)
    _checks.check_finite({"big": big})  # finite extremes pass (a float32 sum would overflow)


def test_match_dense_checks_finiteness_once_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    real = api.check_finite
    monkeypatch.setattr(api, "check_finite", lambda named: (seen.append(list(named)), real(named)))
    a, b = torch.randn(40, 16), torch.randn(50, 16)
    match_dense(a, b, impl="blocked")
    match_dense(a, b, impl="blocked", mutual=True)
    assert seen == [["a", "b"], ["a", "b"]]


def test_inverse_norms_are_one_reduction(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[int, ...], Any]] = []
    norm = torch.linalg.vector_norm

    def counted(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append((tuple(x.shape), kwargs.get("dtype")))
        return norm(x, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "vector_norm", counted)
    x = torch.randn(5000, 24)
    x[17] = 0
    got = cosine.inverse_norms(x)
    assert calls == [((5000, 24), torch.float32)]
    want = 1 / x.double().norm(dim=1).clamp_min(cosine.EPS)
    assert torch.allclose(got.double(), want, rtol=1e-6) and got[17] == 1 / cosine.EPS
    calls.clear()
    gallery = torch.empty(1_700_000, 1280, dtype=torch.float16, device="meta")
    assert cosine.inverse_norms(gallery).shape == (1_700_000,)  # the GPU branch: no chunks
    assert calls == [((1_700_000, 1280), torch.float32)]
    half = x.half()  # 16-bit on the CPU: chunked, since the float32 cast would copy the input
    want = 1 / half.double().norm(dim=1).clamp_min(cosine.EPS)
    calls.clear()
    assert torch.allclose(cosine.inverse_norms(half).double(), want, rtol=1e-6)
    assert len(calls) == -(-5000 // cosine.NORM_ROWS)


def test_column_keys_order_by_score_then_first_row() -> None:
    from cleandift_deploy.kernels.triton_dense import column_key_reference, key_rows

    vals = torch.tensor([0.5, -0.25, 0.5, -0.0, 0.0, -1.0, 1.0, -0.25, 3e-39, -3e-39])
    rows = torch.tensor([9, 4, 2, 0, 7, 1, 2**31 - 1, 3, 5, 6])
    keys = column_key_reference(vals, rows)
    assert torch.equal(key_rows(keys), rows)
    want = sorted(range(len(vals)), key=lambda i: (float(vals[i]), -int(rows[i])))
    assert keys.argsort().tolist() == want
    assert keys[3] > keys[4]  # -0.0 (row 0) ties +0.0 (row 7): the smaller row wins


@interpreted
def test_mutual_buffers_grow_linearly(monkeypatch: pytest.MonkeyPatch) -> None:
    from cleandift_deploy.kernels import triton_dense as td

    sizes: list[list[int]] = []
    run = td.Launch.run

    def recorded(launch: td.Launch) -> None:
        sizes.append([t.numel() for t in launch.args[2:]])
        run(launch)

    monkeypatch.setattr(td.Launch, "run", recorded)
    n, m = 130, 260  # 5 row blocks of 32 under the interpreter, 2 of 128 on a GPU
    a, b = torch.randn(n, 8), torch.randn(m, 8)
    got = match_dense(a.to(DEVICE), b.to(DEVICE), mutual=True, impl="triton")
    ((inv_a, inv_b, row_val, row_idx, col_key),) = sizes
    assert (inv_a, inv_b, col_key) == (n, m, m)
    assert row_val == row_idx and row_val <= 3 * n  # at most three slices (of 256 on a GPU)
    want = match_dense(a, b, mutual=True, impl="reference")
    assert set(map(tuple, got.pairs.tolist())) == set(map(tuple, want.pairs.tolist()))
