"""Hand-over of batches from DataLoader workers through a recycled shared-memory ring.

Without it, every batch a worker makes lives in freshly created shared memory: each batch pays
creating, zero-filling and mapping new pages in the worker and mapping them again in the main
process (~1 ms of system time per float32 sample at 224 px, more than decoding the sample). Here the
main process allocates, once per iteration, `slots` batch-sized buffers per worker in shared memory
before the workers start. A worker writes the big fields (audio, visual) of its i-th batch straight
into its slot i % slots and sends only the slot's number; the main process copies them out into
memory it owns (pinned when asked) and releases the slot at once. Batches handed to the caller are
therefore ordinary tensors that stay valid however long they are kept; a slot is reused only after
its release, which a worker waits for (the DataLoader keeps at most prefetch_factor batches in
flight per worker, so with slots = prefetch_factor + 1 it rarely waits, and then briefly).
Shared memory per rank: num_workers x (prefetch_factor + 1) batches, allocated once per epoch.
"""
from __future__ import annotations

import math
import os
import time

import torch

from .format import NUM_MEL_BINS

SLOT_KEY = "__slot__"
FIELDS = ("audio", "visual")
SHM_DIR = "/dev/shm"


def batch_layout(cfg) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{field: (shape, dtype)} of the big fields of every batch of a resolved LoaderConfig."""
    out_dtype = getattr(torch, cfg.output_dtype)
    frames = (cfg.num_frames,) if cfg.frames == "all" else ()
    return {
        "audio": ((cfg.batch_size, cfg.audio_frames, NUM_MEL_BINS), out_dtype),
        "visual": ((cfg.batch_size, *frames, 3, cfg.image_size, cfg.image_size),
                   torch.uint8 if cfg.raw_frames else out_dtype),
    }


def check_shared_memory(nbytes: int, workers: int, slots: int, where: str = SHM_DIR) -> None:
    """Refuse, with the fix, a ring larger than the free space of /dev/shm: writing past it would
    kill the process with SIGBUS (a "bus error") instead of an error message."""
    try:
        stats = os.statvfs(where)
    except OSError:
        return                                            # no /dev/shm: nothing to check
    free = stats.f_bavail * stats.f_frsize
    if nbytes > free:
        raise RuntimeError(
            f"the loader needs {nbytes / 2**20:.0f} MiB of shared memory ({workers} workers x "
            f"{slots} batches) but {where} has {free / 2**20:.0f} MiB free; give it more (docker "
            f"run --shm-size=16g) or lower num_workers, prefetch_factor or batch_size")


class HandoverRing:
    """`slots` buffers per worker for the layout's fields, and a release counter per worker."""

    def __init__(self, layout: dict, workers: int, slots: int):
        self.layout, self.workers, self.slots = layout, workers, slots
        self.offsets, size = {}, 0
        for name, (shape, dtype) in layout.items():
            itemsize = torch.empty((), dtype=dtype).element_size()
            size = -(-size // 64) * 64                      # each field 64-byte aligned
            self.offsets[name] = size
            size += math.prod(shape) * itemsize
        self.slot_bytes = -(-size // 64) * 64
        check_shared_memory(workers * slots * self.slot_bytes, workers, slots)
        self.buffer = torch.empty(workers * slots * self.slot_bytes, dtype=torch.uint8).share_memory_()
        self.released = torch.zeros(workers, dtype=torch.int64).share_memory_()
        self.made = 0                                     # batches this worker wrote (worker side)
        self.owner = os.getpid()                          # the main process

    def view(self, worker: int, slot: int, name: str) -> torch.Tensor:
        shape, dtype = self.layout[name]
        start = (worker * self.slots + slot) * self.slot_bytes + self.offsets[name]
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        return self.buffer[start:start + nbytes].view(dtype).view(shape)

    # ---------------------------------------------------------------- worker side
    def acquire(self, worker: int) -> "SlotWriter":
        """The slot of this worker's next batch, once the main process released its last use.

        The main process releases a slot as soon as it receives the batch, and DataLoader asks a
        worker for at most prefetch_factor batches ahead, so this wait is short or absent however
        slowly the batches are consumed; it ends with an error only if the main process is gone."""
        slot = self.made % self.slots
        need = self.made - self.slots + 1                 # batches of this worker released so far
        while int(self.released[worker]) < need:
            if os.getppid() != self.owner:
                raise RuntimeError(f"loader worker {worker}: the main process {self.owner} is gone")
            time.sleep(0.0005)
        self.made += 1
        return SlotWriter(self, worker, slot)

    # ---------------------------------------------------------------- main side
    def take(self, batch: dict, pin: bool) -> dict:
        """Replace the slot reference of a received batch by copies of its fields; free the slot."""
        worker, slot = batch.pop(SLOT_KEY)
        for name in FIELDS:
            if batch.get(name) is None:
                source = self.view(worker, slot, name)
                batch[name] = torch.empty(source.shape, dtype=source.dtype,
                                          pin_memory=pin).copy_(source)
        self.released[worker] += 1
        return batch


class SlotWriter:
    """Allocator of one batch's big fields inside its slot (other shapes: ordinary memory)."""

    def __init__(self, ring: HandoverRing, worker: int, slot: int):
        self.ring, self.worker, self.slot = ring, worker, slot

    def empty(self, name: str, shape, dtype: torch.dtype) -> torch.Tensor:
        if self.ring.layout.get(name) == (tuple(shape), dtype):
            return self.ring.view(self.worker, self.slot, name)
        return torch.empty(shape, dtype=dtype)        # DataLoader shares it when sending

    def seal(self, batch: dict) -> dict:
        """Send the slot's number instead of the fields that live in it."""
        for name in FIELDS:
            value = batch.get(name)
            if isinstance(value, torch.Tensor) and self._in_slot(name, value):
                batch[name] = None
        batch[SLOT_KEY] = (self.worker, self.slot)
        return batch

    def _in_slot(self, name: str, value: torch.Tensor) -> bool:
        view = self.ring.view(self.worker, self.slot, name)
        return value.data_ptr() == view.data_ptr() and value.shape == view.shape \
            and value.dtype == view.dtype
