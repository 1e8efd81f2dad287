"""Tied embeddings: the lookup's gradient is added as rows, and the table's gradient stays the same dense tensor."""

from __future__ import annotations

import copy

import torch
from model_families import model_class, tiny_config

from rqa.tied_embeddings import sparse_tied_embedding_gradient


def llama(tied: bool) -> torch.nn.Module:
    config = tiny_config("llama")
    config.tie_word_embeddings = tied
    torch.manual_seed(0)
    return model_class("llama")(config)


def gradients(model: torch.nn.Module, ids: torch.Tensor, passes: int = 1) -> dict[str, torch.Tensor]:
    model.zero_grad()
    for _ in range(passes):  # gradient accumulation adds each pass's gradients to the last
        model(input_ids=ids).logits.float().log_softmax(-1)[..., 3].mean().backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_the_tied_table_gets_the_same_dense_gradient() -> None:
    dense = llama(tied=True)
    assert dense.get_output_embeddings().weight is dense.get_input_embeddings().weight
    rows = copy.deepcopy(dense)
    assert sparse_tied_embedding_gradient(rows)
    ids = torch.randint(3, dense.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    for passes in (1, 2):
        expected, got = gradients(dense, ids, passes), gradients(rows, ids, passes)
        assert expected.keys() == got.keys()
        for name, grad in expected.items():
            assert not got[name].is_sparse, name
            torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    torch.optim.AdamW(rows.parameters(), fused=True).step()  # the optimizer takes it as any dense gradient


def test_a_lookup_gradient_alone_is_made_dense() -> None:
    model = llama(tied=True)
    assert sparse_tied_embedding_gradient(model)
    model.get_input_embeddings()(torch.tensor([[5, 6, 5]])).sum().backward()  # the head takes no part
    grad = model.get_input_embeddings().weight.grad
    assert not grad.is_sparse
    assert grad[5].eq(2).all() and grad[6].eq(1).all() and grad[7].eq(0).all()


def test_untied_tables_are_left_alone() -> None:
    model = llama(tied=False)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    assert not sparse_tied_embedding_gradient(model)
    assert not model.get_input_embeddings().sparse
