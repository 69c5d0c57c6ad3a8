"""ToMe token merging of LongVLM: the original's numbers on the fixture, a plain per-token reference, the schedule."""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_case, load_tensors

from hf_videollm.modeling.token_merging import (
    LONGVLM_PAPER_SCHEDULE,
    LONGVLM_SCRIPT_SCHEDULE,
    bipartite_merge_step,
    halving_schedule,
    merge_segments,
    merged_length,
)


def _reference_step(x: torch.Tensor, size: torch.Tensor, r: int, heads: int):
    """One step for ONE segment written token by token (lists, no gather/scatter): the definition, slowly."""
    t, c = x.shape
    r = min(r, t // 2)
    metric = x.reshape(t, heads, c // heads).mean(1)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a_idx, b_idx = list(range(0, t, 2)), list(range(1, t, 2))
    best = []
    for i in a_idx:
        s = [float(metric[i] @ metric[j]) for j in b_idx]
        j = max(range(len(s)), key=lambda k: s[k])
        best.append((s[j], i, j))
    ranked = sorted(range(len(best)), key=lambda k: -best[k][0])
    merged = set(ranked[:r])
    sums = {j: x[b] * size[b] for j, b in enumerate(b_idx)}
    sizes = {j: size[b].clone() for j, b in enumerate(b_idx)}
    for k in ranked[:r]:
        _, i, j = best[k]
        sums[j] = sums[j] + x[i] * size[i]
        sizes[j] = sizes[j] + size[i]
    out = [x[best[k][1]] for k in ranked if k not in merged]
    out_size = [size[best[k][1]] for k in ranked if k not in merged]
    out += [sums[j] / sizes[j] for j in range(len(b_idx))]
    out_size += [sizes[j] for j in range(len(b_idx))]
    return torch.stack(out), torch.stack(out_size)


def test_vectorised_step_equals_the_per_token_definition():
    torch.manual_seed(0)
    x = torch.randn(3, 24, 8, dtype=torch.float64)  # float64: no ties, the ranking is unambiguous
    size = torch.randint(1, 4, (3, 24, 1)).double()
    out, out_size = bipartite_merge_step(x, size, 7, heads=4)
    assert out.shape == (3, 17, 8)
    for s in range(3):
        ref, ref_size = _reference_step(x[s], size[s], 7, heads=4)
        torch.testing.assert_close(out[s], ref)
        torch.testing.assert_close(out_size[s], ref_size)
    # sizes are conserved: every input token is represented exactly once
    torch.testing.assert_close(out_size.sum(1), size.sum(1))


def test_segments_are_independent():
    torch.manual_seed(1)
    x = torch.randn(4, 40, 16)
    whole = merge_segments(x, (20, 10, 3), heads=4)
    each = torch.cat([merge_segments(x[i : i + 1], (20, 10, 3), heads=4) for i in range(4)])
    torch.testing.assert_close(whole, each)
    assert whole.shape == (4, 7, 16)


def test_duplicates_merge_first_and_average_by_size():
    # token pairs (2k, 2k+1) identical: every A token's best partner is its twin with score 1
    base = torch.randn(1, 5, 8)
    x = base.repeat_interleave(2, dim=1)
    out, size = bipartite_merge_step(x, None, 5, heads=2)
    torch.testing.assert_close(out, base)
    assert size.flatten().tolist() == [2.0] * 5
    with pytest.raises(ValueError, match="divisible"):
        bipartite_merge_step(torch.randn(1, 4, 6), None, 1, heads=4)


def test_schedules():
    assert halving_schedule(2560, 30) == LONGVLM_PAPER_SCHEDULE
    assert merged_length(2560, LONGVLM_PAPER_SCHEDULE) == 30
    assert merged_length(2560, LONGVLM_SCRIPT_SCHEDULE) == 20  # the script's 200-token variant
    for n, m in [(10240, 30), (256, 1), (257, 30), (31, 30), (30, 30)]:
        assert merged_length(n, halving_schedule(n, m)) == m
    with pytest.raises(ValueError, match="fewer tokens"):
        halving_schedule(20, 30)


def test_original_merge_of_segment0_matches_fixture():
    expected = load_tensors(fixture_case("longvlm", "video100_inference") / "expected.safetensors")
    x = expected["merge_input_segment0"]  # (10 frames, 256, C)
    seg = x.reshape(1, -1, x.shape[-1])
    ours = merge_segments(seg, LONGVLM_PAPER_SCHEDULE)[0]
    torch.testing.assert_close(ours, expected["local_features"][:30], atol=1e-4, rtol=1e-4)
    script = merge_segments(seg, LONGVLM_SCRIPT_SCHEDULE)[0]
    torch.testing.assert_close(script, expected["local_features_script_variant"][:20], atol=1e-4, rtol=1e-4)


def test_half_precision_merges_in_float32_without_overflow():
    x = 300 + torch.randn(2, 512, 32)  # large, similar activations: the size-weighted sums exceed float16 range
    x = x.half()
    ref = merge_segments(x.float(), halving_schedule(512, 3), heads=4)  # same (rounded) input in float32
    half = merge_segments(x, halving_schedule(512, 3), heads=4)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), ref, atol=0.1, rtol=1e-3)
