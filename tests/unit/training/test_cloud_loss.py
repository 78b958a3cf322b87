"""The CLoud loss on literal rewards, logits and labels; where the reward is read."""

import math

import pytest
import torch

from autorule.training.cloud_loss import (
    IGNORE_INDEX,
    at_last_token,
    bradley_terry_loss,
    cloud_loss,
    critique_positions,
    last_token_index,
    select_critique,
)

X = IGNORE_INDEX


def test_last_token_is_the_last_attended_one_for_either_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]
    values = torch.arange(15.0).view(3, 5)
    assert at_last_token(values, right).tolist() == [2.0, 9.0, 10.0]


def test_a_row_without_any_token_is_refused():
    with pytest.raises(ValueError, match="at least one attended token"):
        last_token_index(torch.tensor([[1, 1], [0, 0]]))


def test_critique_positions_shift_the_labels_by_one():
    # Row 0: prompt (3 tokens), critique 7 8, eos 2, then padding.
    labels = torch.tensor([[X, X, X, 7, 8, 2, X], [X, X, 5, 2, X, X, X]])
    keep, targets = critique_positions(labels)
    # Position t predicts token t+1: positions 2, 3, 4 of row 0 and 1, 2 of row 1.
    assert keep.tolist() == [
        [False, False, True, True, True, False],
        [False, True, True, False, False, False],
    ]
    assert targets.tolist() == [7, 8, 2, 5, 2]
    hidden = torch.arange(14.0).view(2, 7, 1)
    selected, _ = select_critique(hidden, labels)
    assert selected.squeeze(-1).tolist() == [2.0, 3.0, 4.0, 8.0, 9.0]


def test_bradley_terry_loss_on_literal_rewards():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    # -log sigmoid(m) = log(1 + exp(-m)), margins 2 and -1
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def literal_batch():
    """Two sequences of 4 tokens over a vocabulary of 3; the critique is tokens 2-3 of row 0
    and token 3 of row 1 (labels), so logits at positions 1, 2 (row 0) and 2 (row 1) count."""
    labels = torch.tensor([[X, X, 1, 2], [X, X, X, 0]])
    logits = torch.zeros(2, 4, 3)
    logits[0, 1] = torch.tensor([0.0, 2.0, 0.0])  # predicts token 1: right, confident
    logits[0, 2] = torch.tensor([1.0, 0.0, 0.0])  # predicts token 2: wrong
    logits[1, 2] = torch.tensor([0.0, 0.0, 0.0])  # predicts token 0: uniform
    return logits, labels


def ce(logit_row, target):
    return -torch.log_softmax(torch.tensor(logit_row), dim=-1)[target].item()


def test_cloud_loss_is_bt_plus_lambda_times_critique_cross_entropy():
    logits, labels = literal_batch()
    chosen, rejected = torch.tensor([1.0]), torch.tensor([0.0])
    selected, targets = select_critique(logits, labels)
    out = cloud_loss(chosen, rejected, selected, targets, lm_weight=1.25)
    lm = (ce([0.0, 2.0, 0.0], 1) + ce([1.0, 0.0, 0.0], 2) + ce([0.0, 0.0, 0.0], 0)) / 3
    bt = math.log1p(math.exp(-1.0))
    assert out.critique_lm.item() == pytest.approx(lm, rel=1e-6)
    assert out.bradley_terry.item() == pytest.approx(bt, rel=1e-6)
    assert out.total.item() == pytest.approx(bt + 1.25 * lm, rel=1e-6)
    half = cloud_loss(chosen, rejected, selected, targets, lm_weight=0.75)
    assert half.total.item() == pytest.approx(bt + 0.75 * lm, rel=1e-6)


def test_tokens_outside_the_critique_do_not_move_the_lm_loss():
    logits, labels = literal_batch()
    before = cloud_loss(torch.zeros(1), torch.zeros(1), *select_critique(logits, labels), 1.0)
    logits[0, 0] = torch.tensor([9.0, -9.0, 3.0])  # predicts a prompt token
    logits[1, 3] = torch.tensor([-4.0, 4.0, 0.0])  # the last position predicts nothing
    after = cloud_loss(torch.zeros(1), torch.zeros(1), *select_critique(logits, labels), 1.0)
    assert after.total.item() == before.total.item()


def test_classic_loss_is_bradley_terry_alone():
    out = cloud_loss(torch.tensor([0.5, 3.0]), torch.tensor([1.0, -1.0]))
    assert out.critique_lm is None
    assert (
        out.total.item()
        == bradley_terry_loss(torch.tensor([0.5, 3.0]), torch.tensor([1.0, -1.0])).item()
    )


def test_a_batch_without_critique_tokens_has_zero_lm_loss_and_a_gradient():
    logits = torch.zeros(2, 3, 5, requires_grad=True)
    labels = torch.full((2, 3), X)
    out = cloud_loss(torch.zeros(2), torch.zeros(2), *select_critique(logits, labels), 1.25)
    assert out.critique_lm.item() == 0.0
    out.total.backward()  # no error: the graph is intact
