"""Work done by rank 0 alone (saving, converting, averaging): a failure there stops every rank with
a message instead of leaving the others in a barrier (real gloo process group, 2 ranks)."""
from __future__ import annotations

import socket
from datetime import timedelta

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.engine.distributed import on_main_rank

pytestmark = [pytest.mark.multiproc, pytest.mark.e2e]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, fail: bool, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))

    def work():
        if fail:
            raise FileNotFoundError("epoch weights are missing")
        return "done"

    try:
        results[rank] = ("ok", on_main_rank(rank == 0, work))
    except Exception as exc:  # noqa: BLE001 - the test reads what each rank raised
        results[rank] = (type(exc).__name__, str(exc))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("fail", [False, True])
def test_a_failure_on_rank_zero_stops_every_rank(fail):
    results = mp.Manager().dict()
    mp.start_processes(_rank, args=(_port(), fail, results), nprocs=2, join=True,
                       start_method="spawn")
    if not fail:
        assert results[0] == ("ok", "done") and results[1] == ("ok", None)
    else:
        assert results[0] == ("FileNotFoundError", "epoch weights are missing")
        assert results[1][0] == "RuntimeError" and "rank 0 failed" in results[1][1] \
            and "epoch weights are missing" in results[1][1]
