"""Cross-rank loss pieces on 2 real processes (gloo, CPU): the result must equal one process on
the whole mini-batch (the algorithm does not depend on the number of GPUs)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prefix_rft import distributed as D
from prefix_rft.loss import select_by_entropy

# a mini-batch's candidate-token entropies (with ties), split unevenly: rank 0 gets 7, rank 1 gets 4
ENTROPY = torch.tensor([0.5, 2.0, 0.1, 2.0, 1.5, 0.3, 0.9, 0.2, 0.0, 1.1, 0.7])
SPLIT = 7


def _worker(rank: int, size: int, init: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    try:
        local = ENTROPY[:SPLIT] if rank == 0 else ENTROPY[SPLIT:]
        res = {}
        for mode in ("top", "bottom", "all"):
            res[mode] = D.select_by_entropy_global(local, 0.2, mode)
        g = torch.Generator().manual_seed(7)  # the same state on every rank
        res["random"] = D.select_by_entropy_global(local, 0.5, "random", g)
        res["count"] = torch.tensor(D.all_reduce_sum(int(local.numel())))
        # a linear "policy": loss_r = sum(w . x_i) / N over this rank's rows, N global
        torch.manual_seed(0)
        x = torch.randn(10, 3)
        rows = x[:6] if rank == 0 else x[6:]
        model = torch.nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[0.3, -0.2, 0.5]]))
        n_global = D.all_reduce_sum(rows.shape[0])
        (model(rows).pow(2).sum() / n_global).backward()
        D.sum_gradients(model)
        res["grad"] = model.weight.grad.clone()
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for mode, fraction in (("top", 0.2), ("bottom", 0.2), ("all", 0.2)):
        single = select_by_entropy(ENTROPY, fraction, mode)
        assert torch.equal(torch.cat([r0[mode], r1[mode]]), single), mode
    # top 20% of 11 tokens: k = ceil(2.2) = 3 -> 2.0, 2.0, 1.5 at positions 1, 3, 4, all on rank 0
    assert torch.cat([r0["top"], r1["top"]]).nonzero().flatten().tolist() == [1, 3, 4]
    assert not r1["top"].any()
    # per-rank selection would differ: rank 0 keeps ceil(1.4) = 2, rank 1 ceil(0.8) = 1 (its 1.1)
    per_rank = torch.cat([select_by_entropy(ENTROPY[:SPLIT], 0.2), select_by_entropy(ENTROPY[SPLIT:], 0.2)])
    assert per_rank.nonzero().flatten().tolist() == [1, 3, 9]
    g = torch.Generator().manual_seed(7)
    assert torch.equal(torch.cat([r0["random"], r1["random"]]),
                       select_by_entropy(ENTROPY, 0.5, "random", g))
    assert int(r0["count"]) == int(r1["count"]) == 11
    # the summed gradient equals one process on all 10 rows: d/dw sum((w.x)^2)/10 = 2 X^T X w / 10
    torch.manual_seed(0)
    x = torch.randn(10, 3)
    w = torch.tensor([0.3, -0.2, 0.5])
    expect = (2 * x.T @ (x @ w) / 10).unsqueeze(0)
    assert torch.allclose(r0["grad"], expect, rtol=1e-5, atol=1e-7)
    assert torch.equal(r0["grad"], r1["grad"])


def test_single_process_is_the_identity():
    assert D.world() == (0, 1)
    e = torch.tensor([1.0, 3.0, 2.0])
    assert torch.equal(D.select_by_entropy_global(e, 0.5, "top"), select_by_entropy(e, 0.5, "top"))
    assert D.all_reduce_sum(4) == 4 and D.all_reduce_sum(2.5) == 2.5
    assert [t.tolist() for t in D.all_gather_variable(e)] == [[1.0, 3.0, 2.0]]


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
