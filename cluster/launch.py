"""torchrun, as the SLURM batch scripts start it, with one line instead of torchrun's traceback
and failure box when a rank fails: the rank has said why (a user error once, on rank 0), and the
node's exit code is that rank's (2 for a user error), so the batch script ends with it.

    python -m cluster.launch [torchrun arguments] -m cluster.cli pretrain ...
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        print(f"[avsiam] rank {rank} (local rank {failure.local_rank}) ended with {how}; its "
              "message is above", file=sys.stderr, flush=True)
        return code if 0 < code < 128 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
