"""ToMe-style token merging (bipartite soft matching, size-weighted averages), vectorised over segments.

LongVLM (ziplab/LongVLM ``longvlm/model/merge.py``, after Bolya et al., "Token Merging", ICLR 2023) reduces the
patch tokens of each video segment -- the ``F x P`` patch tokens of ``F`` consecutive frames -- to a few tokens by a
hierarchy of merging steps. One step on a segment of ``t`` tokens, removing ``r`` of them:

1. metric: the features split into ``heads`` equal channel groups and averaged over the groups (``C / heads``
   channels), L2-normalised;
2. bipartite split: tokens at even positions form set A, odd positions set B; cosine scores A x B;
3. each A token's best B partner; the ``r = min(r, t // 2)`` A tokens with the highest best scores are merged into
   their partners;
4. merging is a size-weighted average: ``sum(x * size) / sum(size)``, sizes (tokens represented) carried across steps;
5. output order: the A tokens that were not merged, in descending-score order, then every B token in its original
   order.

Half-precision inputs are merged in float32 (the weighted sums would overflow float16) and returned in their dtype.
Every step runs on all segments of a batch at once (``(segments, tokens, channels)`` tensors, ``gather`` /
``scatter_add``): there is no Python loop over segments or tokens. The matching itself is not differentiable (it is
computed without gradients, as ToMe does); the weighted averages are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "bipartite_merge_step",
    "merge_segments",
    "merged_length",
    "halving_schedule",
    "LONGVLM_PAPER_SCHEDULE",
    "LONGVLM_SCRIPT_SCHEDULE",
]

#: ``merge.py``'s default ``r_merge_list``: 2560 tokens (10 frames x 256 patches) -> 30 per segment (paper, training).
LONGVLM_PAPER_SCHEDULE = (1280, 640, 320, 160, 80, 40, 10)
#: the list ``scripts/save_features.py`` passes: the same halvings, then ``min(40, 40 // 2) = 20`` -> 20 per segment.
LONGVLM_SCRIPT_SCHEDULE = (2880, 1440, 720, 360, 180, 90, 40)


def merged_length(tokens: int, schedule: Sequence[int]) -> int:
    """Tokens left after running ``schedule`` on ``tokens`` tokens (each step removes ``min(r, t // 2)``)."""
    for r in schedule:
        tokens -= max(0, min(int(r), tokens // 2))
    return tokens


def halving_schedule(tokens: int, target: int) -> tuple[int, ...]:
    """The hierarchical schedule of ``merge.py`` for any size: halve while the half is at least ``target``, then
    remove the rest in one step. ``halving_schedule(2560, 30) == LONGVLM_PAPER_SCHEDULE``.

    A step can remove at most half of its tokens, so a ``target`` below ``ceil(tokens / 2**k)`` needs more halvings;
    ``target >= 1`` is always reachable."""
    if target < 1:
        raise ValueError(f"the number of merged tokens per segment must be >= 1, got {target}")
    if target > tokens:
        raise ValueError(f"cannot merge {tokens} tokens into {target}: a segment has fewer tokens than requested")
    steps: list[int] = []
    t = tokens
    while t > target:
        half = t // 2
        r = half if t - half >= target else t - target
        steps.append(r)
        t -= r
    return tuple(steps)


def bipartite_merge_step(
    x: torch.Tensor, size: torch.Tensor | None, r: int, heads: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ToMe step on ``x`` ``(segments, t, C)`` with token sizes ``size`` ``(segments, t, 1)`` (``None``: all 1).

    Returns ``(x', size')`` with ``t - min(r, t // 2)`` tokens per segment (see the module docstring for the order)."""
    s, t, c = x.shape
    if size is None:
        size = x.new_ones(s, t, 1)
    r = min(int(r), t // 2)
    if r <= 0:
        return x, size
    if c % heads:
        raise ValueError(f"token merging averages the {c} channels over {heads} groups: {c} is not divisible by {heads}")
    with torch.no_grad():
        metric = x.reshape(s, t, heads, c // heads).mean(2)
        metric = metric / metric.norm(dim=-1, keepdim=True)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (s, |A|, |B|)
        best, partner = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
        merged, kept = order[:, :r, None], order[:, r:, None]
        into = partner[..., None].gather(1, merged)
    # Weighted values and sizes travel together: sum(x * size) and sum(size) with one gather / scatter.
    both = torch.cat([x * size, size.to(x.dtype)], dim=-1)
    a, b = both[:, ::2], both[:, 1::2]
    w = c + 1
    unmerged = a.gather(1, kept.expand(-1, -1, w))
    b = b.scatter_add(1, into.expand(-1, -1, w), a.gather(1, merged.expand(-1, -1, w)))
    out = torch.cat([unmerged, b], dim=1)
    new_size = out[..., c:]
    return out[..., :c] / new_size, new_size


def merge_segments(x: torch.Tensor, schedule: Sequence[int], heads: int = 16) -> torch.Tensor:
    """Run the hierarchical ``schedule`` on every segment of ``x`` ``(segments, tokens, C)`` at once ->
    ``(segments, merged_length(tokens, schedule), C)``."""
    if x.ndim != 3:
        raise ValueError(f"merge_segments takes (segments, tokens, channels), got shape {tuple(x.shape)}")
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        # sums of size-weighted features reach (tokens per segment) x (feature size): beyond fp16's range for
        # CLIP's large activations; merge in float32 and return the input dtype
        x = x.float()
    size = None
    for r in schedule:
        x, size = bipartite_merge_step(x, size, r, heads)
    return x.to(dtype)
