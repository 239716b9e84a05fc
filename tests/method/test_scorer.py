"""The type scorer: shapes, detach, chunk pooling, straight-through Gumbel, inference types."""

import pytest
import torch

from nats_model.scorer import (
    TypeScorer,
    chunk_is_finished,
    chunk_mean_pool,
    infer_types,
    mark_unfinished_chunk_global,
    sample_train_types,
)


def test_scorer_shapes_layout_and_no_bias():
    torch.manual_seed(0)
    scorer = TypeScorer(16, 2)
    assert scorer.proj.bias is None and scorer.proj.weight.shape == (6, 16)
    x = torch.randn(3, 7, 16)
    logits = scorer(x)
    assert logits.shape == (3, 2, 7, 3)
    # KV head h reads rows 3h..3h+2 of the projection
    manual = x @ scorer.proj.weight.T  # (B, N, 6)
    assert torch.allclose(logits[:, 1], manual[..., 3:6])
    assert torch.allclose(logits[:, 0], manual[..., 0:3])


def test_scorer_detaches_its_input():
    scorer = TypeScorer(8, 1)
    x = torch.randn(2, 5, 8, requires_grad=True)
    scorer(x).sum().backward()
    assert x.grad is None
    assert scorer.proj.weight.grad is not None and scorer.proj.weight.grad.abs().sum() > 0


def test_chunk_pooling_with_ragged_last_chunk():
    torch.manual_seed(1)
    x = torch.randn(2, 10, 4)
    pooled = chunk_mean_pool(x, 4)
    assert pooled.shape == (2, 3, 4)
    assert torch.allclose(pooled[:, 0], x[:, 0:4].mean(1))
    assert torch.allclose(pooled[:, 1], x[:, 4:8].mean(1))
    assert torch.allclose(pooled[:, 2], x[:, 8:10].mean(1))  # the 2 tokens it has
    scorer = TypeScorer(4, 2, chunk_size=4)
    logits = scorer(x)
    assert logits.shape == (2, 2, 3, 3)
    plain = TypeScorer(4, 2)
    plain.proj.weight.data.copy_(scorer.proj.weight.data)
    assert torch.allclose(logits, plain(pooled))
    with pytest.raises(ValueError, match="chunk_size"):
        TypeScorer(4, 2, chunk_size=0)


def test_train_types_are_hard_one_hot_with_forced_global_ends():
    torch.manual_seed(2)
    logits = torch.randn(4, 2, 9, 3)
    logits[..., 0] -= 20.0  # Global very unlikely except where forced
    y = sample_train_types(logits)
    assert y.shape == logits.shape
    assert torch.equal(y.sum(-1), torch.ones(4, 2, 9))
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    assert (y[..., 0, 0] == 1).all() and (y[..., -1, 0] == 1).all()
    assert (y[..., 1:-1, 0] == 0).all()


def test_train_types_follow_the_logits_distribution():
    torch.manual_seed(3)
    probs = torch.tensor([0.2, 0.5, 0.3])
    logits = probs.log().expand(1, 1, 4002, 3).contiguous()
    y = sample_train_types(logits)[0, 0, 1:-1]  # (4000, 3) free positions
    freq = y.mean(0)
    assert torch.allclose(freq, probs, atol=0.03), freq


def test_straight_through_gradient_reaches_scorer_weights_not_forced_positions():
    torch.manual_seed(4)
    scorer = TypeScorer(8, 2)
    x = torch.randn(2, 6, 8)
    logits = scorer(x)
    logits.retain_grad()
    y = sample_train_types(logits)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    g = logits.grad
    assert g[..., 0, :].abs().max() == 0 and g[..., -1, :].abs().max() == 0
    assert g[..., 1:-1, :].abs().min() > 0  # every free logit gets a signal
    assert scorer.proj.weight.grad.abs().sum() > 0
    # the straight-through gradient is that of the soft sample: rows sum to zero (softmax Jacobian)
    assert torch.allclose(g.sum(-1), torch.zeros_like(g.sum(-1)), atol=1e-6)


def test_generator_makes_sampling_reproducible():
    logits = torch.randn(1, 2, 20, 3)
    a = sample_train_types(logits, generator=torch.Generator().manual_seed(5))
    b = sample_train_types(logits, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_infer_types_argmax_with_global_bias_and_forced_first():
    logits = torch.tensor([[[0.0, 1.0, 0.0], [0.95, 1.0, 0.0], [0.85, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    assert infer_types(logits, global_bias=0.1).tolist() == [[0, 0, 1, 2]]
    assert infer_types(logits, global_bias=0.0).tolist() == [[0, 1, 1, 2]]
    assert infer_types(logits, global_bias=0.2).tolist() == [[0, 0, 0, 2]]
    t = infer_types(torch.randn(2, 3, 5, 3))
    assert t.shape == (2, 3, 5) and t.dtype == torch.long and (t[..., 0] == 0).all()


def test_unfinished_chunk_counts_as_global():
    types = torch.tensor([[0, 1, 2]])
    assert mark_unfinished_chunk_global(types, 10, 4).tolist() == [[0, 1, 0]]  # chunk 2 has 2 of 4
    assert mark_unfinished_chunk_global(types, 12, 4).tolist() == [[0, 1, 2]]  # complete
    assert types.tolist() == [[0, 1, 2]]  # not modified in place
    assert chunk_is_finished(8, 1, 4) and not chunk_is_finished(7, 1, 4)
    with pytest.raises(ValueError, match="chunks"):
        mark_unfinished_chunk_global(types, 20, 4)
