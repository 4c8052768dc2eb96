"""Hand-computed checks of the downstream metrics (top-k, clip averaging, Recall@k)."""

from __future__ import annotations

import pytest
import torch

from train.downstream.metrics import (
    average_clip_logits,
    centre_and_normalise,
    retrieval_recall,
    topk_accuracy,
)


def test_topk_accuracy_hand_computed() -> None:
    logits = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.02],  # target 0: rank 1
            [0.1, 0.2, 0.6, 0.1],  # target 1: rank 2
            [0.5, 0.1, 0.3, 0.05],  # target 3: rank 4
            [0.0, 0.0, 1.0, 0.5],  # target 3: rank 2
        ]
    )
    targets = torch.tensor([0, 1, 3, 3])
    acc = topk_accuracy(logits, targets, ks=(1, 2, 3, 5))
    assert acc[1] == pytest.approx(25.0)
    assert acc[2] == pytest.approx(75.0)
    assert acc[3] == pytest.approx(75.0)
    assert acc[5] == pytest.approx(100.0)  # k > C is clamped to C


def test_topk_accuracy_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="one entry per row"):
        topk_accuracy(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        topk_accuracy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


def test_average_clip_logits_changes_the_decision() -> None:
    # Video 0: one confident wrong clip, two mildly right clips -> the mean is right.
    clips = torch.tensor(
        [
            [[0.0, 3.0], [2.0, 0.0], [2.0, 0.0]],
            [[1.0, 2.0], [1.0, 4.0], [4.0, 0.0]],
        ]
    )
    mean = average_clip_logits(clips)
    assert torch.allclose(mean, torch.tensor([[4.0 / 3, 1.0], [2.0, 2.0]]))
    flat = average_clip_logits(clips.reshape(6, 2), num_clips=3)
    assert torch.equal(flat, mean)
    assert topk_accuracy(mean[:1], torch.tensor([0]), ks=(1,))[1] == 100.0
    with pytest.raises(ValueError, match="num_clips"):
        average_clip_logits(clips.reshape(6, 2), num_clips=4)


def test_centre_and_normalise_uses_gallery_mean() -> None:
    gallery = torch.tensor([[1.0, 1.0], [3.0, 1.0]])  # mean (2, 1)
    queries = torch.tensor([[2.0, 3.0]])
    g, q = centre_and_normalise(gallery, queries)
    assert torch.allclose(g, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(q, torch.tensor([[0.0, 1.0]]))


def test_retrieval_recall_hand_computed() -> None:
    # Gallery on the unit circle at 0, 90, 180 and 270 degrees (mean 0, so centring is a no-op).
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    gallery_labels = torch.tensor([0, 1, 2, 1])
    queries = torch.tensor(
        [
            [1.0, 0.1],  # nearest: 0 (label 0) -> hit at 1
            [0.9, -1.0],  # order 3 (label 1), 0, 1, 2 -> label 0 found at rank 2
            [-1.0, 0.2],  # order 2 (label 2), 1, 3, 0 -> label 0 found only at rank 4
        ]
    )
    query_labels = torch.tensor([0, 0, 0])
    recall = retrieval_recall(queries, query_labels, gallery, gallery_labels, ks=(1, 2, 3, 4, 50))
    assert recall[1] == pytest.approx(100.0 / 3)
    assert recall[2] == pytest.approx(200.0 / 3)
    assert recall[3] == pytest.approx(200.0 / 3)
    assert recall[4] == pytest.approx(100.0)
    assert recall[50] == pytest.approx(100.0)  # k > gallery is clamped


def test_retrieval_recall_centring_matters() -> None:
    # All gallery features share a large offset; without centring every query looks alike.
    offset = torch.tensor([10.0, 10.0])
    gallery = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]) + offset
    # Centred, the query (-1, -1) points at (-1, 0); uncentred, (9, 9) is closer in angle to (11, 10).
    queries = torch.tensor([[-1.0, -1.0]]) + offset
    labels_g = torch.tensor([0, 1])
    labels_q = torch.tensor([1])
    assert retrieval_recall(queries, labels_q, gallery, labels_g, ks=(1,))[1] == 100.0
    assert retrieval_recall(queries, labels_q, gallery, labels_g, ks=(1,), centre=False)[1] == 0.0
