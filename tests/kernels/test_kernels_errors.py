"""Bad inputs fail with one clear ValueError that says what to pass."""

from __future__ import annotations

import pytest
import torch

from cleandift_deploy.kernels import match_dense, match_points


def test_dense_rejects_bad_inputs() -> None:
    a, b = torch.randn(10, 8), torch.randn(12, 8)
    with pytest.raises(ValueError, match=r"a must have shape \[N, C\]"):
        match_dense(a[None], b)
    with pytest.raises(ValueError, match="channel mismatch: 8 vs 4"):
        match_dense(a, b[:, :4])
    with pytest.raises(ValueError, match="NaN or Inf"):
        match_dense(a, b.index_fill(0, torch.tensor([3]), float("nan")))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        match_dense(a.long(), b)
    with pytest.raises(ValueError, match="k must be between 1 and"):
        match_dense(a, b, k=13)
    with pytest.raises(ValueError, match="k=1 only"):
        match_dense(a, b, k=2, mutual=True)
    with pytest.raises(ValueError, match="impl must be one of"):
        match_dense(a, b, impl="cublas")
    with pytest.raises(ValueError, match="must not be empty"):
        match_dense(a[:0], b)


def test_points_reject_bad_inputs() -> None:
    src, tgt = torch.randn(8, 6, 6), torch.randn(8, 5, 7)
    pts = torch.tensor([[3.0, 4.0]])
    with pytest.raises(ValueError, match=r"outside the source image of size \(H=48, W=40\)"):
        match_points(src, tgt, torch.tensor([[40.0, 4.0]]), (48, 40), (40, 56))
    with pytest.raises(ValueError, match=r"points must be a \[K,2\]"):
        match_points(src, tgt, pts[0], (48, 40), (40, 56))
    with pytest.raises(ValueError, match="channel mismatch"):
        match_points(src, tgt[:4], pts, (48, 40), (40, 56))
    with pytest.raises(ValueError, match=r"tgt must have shape \[C, h2, w2\]"):
        match_points(src, tgt[0], pts, (48, 40), (40, 56))
    with pytest.raises(ValueError, match="src_size must be"):
        match_points(src, tgt, pts, (48, 0), (40, 56))
    with pytest.raises(ValueError, match="mode must be one of"):
        match_points(src, tgt, pts, (48, 40), (40, 56), mode="softargmax")
    with pytest.raises(ValueError, match="NaN or Inf"):
        match_points(src * float("inf"), tgt, pts, (48, 40), (40, 56))
    with pytest.raises(ValueError, match="beta > 0"):
        match_points(src, tgt, pts, (48, 40), (40, 56), beta=0.0)
