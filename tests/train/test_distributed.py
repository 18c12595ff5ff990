"""Rank awareness: every rank its shard of each global batch, DDP equal to one process on the same global
batches, only rank 0 writing; two processes on the CPU (gloo)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from lth_sparse.data import RandomCropFlip, Split, batches
from lth_sparse.train import train
from tests.tolerances import assert_close
from tests.train.conftest import config, small_model, weights

WORLD = 2
DDP_TRAIN_SIZE = 76  # batches of 33, 33, 10: shards of 17 and 16, then 5 and 5
DDP_BATCH = 33


@pytest.mark.parametrize("world_size", [2, 3])
def test_the_shards_of_a_batch_are_the_batch_cut_in_rank_order(world_size):
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(23, 1, 6, 6, generator=g), torch.arange(23))
    augment = RandomCropFlip(2, flip=True)

    def epoch(rank, size):
        return list(
            batches(
                split,
                10,
                shuffle=True,
                generator=torch.Generator().manual_seed(4),
                augment=augment,
                with_index=True,
                rank=rank,
                world_size=size,
            )
        )

    whole = epoch(0, 1)
    shards = [epoch(rank, world_size) for rank in range(world_size)]
    for b, (x, y, index) in enumerate(whole):
        parts = [shard[b] for shard in shards]
        sizes = [len(part[1]) for part in parts]
        assert sizes == [len(t) for t in torch.tensor_split(y, world_size)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x), "augmented as one batch, then cut"
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert torch.equal(torch.cat([p[2] for p in parts]), index)
        assert torch.equal(y, index), "the labels here are the indices"


def test_a_batch_smaller_than_the_world_is_a_value_error(digits):
    short = dataclasses.replace(digits, train=Split(digits.train.x[:65], digits.train.y[:65]))  # a last batch of 1
    with pytest.raises(ValueError, match="world_size"):
        train(small_model(), short, config(), rank=0, world_size=2, progress=False)


def ddp_worker(rank, port, data, cfg, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = DistributedDataParallel(small_model())
        indices, snapshots = [], []
        result = train(
            model,
            data,
            cfg,
            seed=3,
            progress=False,
            metrics_path=out_dir / f"metrics{rank}.jsonl",
            checkpoint_path=out_dir / f"checkpoint{rank}.pt",
            snapshot_at=[2],
            on_snapshot=lambda it, state: snapshots.append((it, sorted(state))),
            callbacks=[lambda step: indices.append(step.index.clone())],
        )
        torch.save(
            {
                "weights": weights(model.module),
                "history": result.history,
                "result": result.to_dict(),
                "indices": indices,
                "snapshots": snapshots,
            },
            out_dir / f"out{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_on_two_ranks_equals_one_process_on_the_same_global_batches(free_port, digits, tmp_path):
    data = dataclasses.replace(digits, train=Split(digits.train.x[:DDP_TRAIN_SIZE], digits.train.y[:DDP_TRAIN_SIZE]))
    cfg = config(epochs=2, batch_size=DDP_BATCH, lr=0.2, momentum=0.0)
    # Forked, not spawned, with what DDP's constructor imports (torch._dynamo) imported once here: the
    # workers start without seconds of imports each.
    import torch._dynamo  # noqa: F401

    mp.start_processes(ddp_worker, args=(free_port, data, cfg, tmp_path), nprocs=WORLD, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"out{rank}.pt", weights_only=False) for rank in range(WORLD)]

    single = small_model()
    indices = []
    result = train(single, data, cfg, seed=3, progress=False, callbacks=[lambda step: indices.append(step.index)])
    assert len(indices) == 6
    for step, index in enumerate(indices):
        shards = [r["indices"][step] for r in ranks]
        assert [len(s) for s in shards] == [len(t) for t in torch.tensor_split(index, WORLD)]
        assert torch.equal(torch.cat(shards), index), "the global batch, cut in rank order"

    assert not torch.equal(single.fc1.weight, small_model().fc1.weight), "precondition: training moves the weights"
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), f"{key} differs between the ranks"
        if value.is_floating_point():
            assert_close(value, weights(single)[key], scale=10)
        else:
            assert torch.equal(value, weights(single)[key]), key
    assert ranks[0]["history"] == ranks[1]["history"], "every rank evaluates and reduces the training loss"
    for entry, expected in zip(ranks[0]["history"], result.history, strict=True):
        assert entry["iteration"] == expected["iteration"]
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert entry[key] == pytest.approx(expected[key], rel=1e-5), key

    assert ranks[0]["snapshots"] == [(2, sorted(single.state_dict()))], "rank 0 snapshots the inner module's state"
    assert ranks[1]["snapshots"] == []
    records = [json.loads(line) for line in (tmp_path / "metrics0.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [3, 6]
    assert (tmp_path / "checkpoint0.pt").exists()
    assert not (tmp_path / "metrics1.jsonl").exists() and not (tmp_path / "checkpoint1.pt").exists()
