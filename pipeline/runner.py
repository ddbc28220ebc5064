"""Run a sharding job: plan, pick this task's shards, decode in workers, write and commit in order.

Resume: a shard is committed iff its stats file reads back whole and its tar has the recorded
size (`shard_writer.committed_stats`); committed shards are skipped, any other shard is redone
from scratch (leftovers deleted first). `--retry-failed` un-commits shards that
have failed rows, re-decodes only those rows and copies the others from the old tar, which gives
the same bytes as a fresh run. Kill the job at any moment and re-run it: the result is the same.

Concurrent runs on one --out (a re-submitted SLURM array task, a second terminal): each shard is
written and committed only by the process holding its lock (`pipeline.locks`), the plan is read or
written under the plan lock and dataset.json under the dataset lock. A run takes the free shards of
its task, leaves busy ones to their holders, then waits for those and redoes any whose holder died
before committing; the runs share the work and the folder ends as after one uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from pipeline import dataset_json, preflight
from pipeline.clip import ClipContext, ClipResult, ClipTask, failed
from pipeline.config import ShardConfig, check_inputs, utf8_input
from pipeline.labels import read_labels, vocabulary_from
from pipeline.locks import FileLock, FolderLocks
from pipeline.manifest import choose_split, read_manifest
from pipeline.output_files import (check_out, fsync_dir, prepare_out, remove_temps, temp_target,
                                   writing)
from pipeline.params import params_hash
from pipeline.plan import Plan, build_plan, load_or_write, read_plan, write_plan
from pipeline.progress import clip_progress
from pipeline.run_log import RunLog
from pipeline.shard_writer import (Reused, ShardWriter, committed_stats, identity,
                                   remove_leftovers, shard_names)
from pipeline.workers import WorkerFailure, WorkerPool
from shards import format as fmt


@dataclass
class RunSummary:
    plan: Plan
    shards_written: int = 0
    shards_skipped: int = 0
    rows: int = 0
    ok: int = 0
    failed: int = 0
    dataset_json: Path | None = None
    resources: dict | None = None
    """Workers' memory peaks and CPU time (with their ffmpeg children), see workers.ResourceUse."""
    task_totals: dict | None = None
    """rows, ok, failures (Counter by reason code) of this task's committed shards; num_tasks."""


def make_plan(cfg: ShardConfig) -> Plan:
    """Build the plan from the manifest and store it (or check it against the stored one).

    A re-run whose manifest and labels files, --videos and parameters are byte-for-byte those of
    the stored plan reuses it without re-reading the manifest (seconds instead of a minute at 2M
    rows); otherwise the plan is rebuilt and must equal the stored one. A first run checks that
    the rows find their files (`pipeline.preflight`) before it writes anything. The stored plan is
    read without a lock (it is only ever replaced atomically) and compared or written under the
    plan lock, so array tasks starting together build in parallel and store one plan."""
    fingerprint = _input_fingerprint(cfg)
    stored = cfg.out / fmt.MANIFEST_NAME
    if fingerprint and stored.exists():
        plan = read_plan(cfg.out)
        if plan.meta.get("input_fingerprint") == fingerprint:
            return plan
    with utf8_input(cfg.manifest, "--manifest"):
        manifest = read_manifest(cfg.manifest, cfg.manifest_format, videos=cfg.videos,
                                 extensions=cfg.plan.extensions)
    manifest = choose_split(manifest, cfg.select_split, cfg.manifest)
    with utf8_input(cfg.labels, "--labels"):
        vocabulary = read_labels(cfg.labels) if cfg.labels else vocabulary_from(manifest.labels)
    plan = build_plan(manifest, vocabulary, cfg.plan, cfg.clip, params_hash(cfg.clip.as_dict()),
                      videos=cfg.videos)
    plan.meta["input_fingerprint"] = fingerprint
    if not stored.exists():
        preflight.check_files(plan, cfg.videos, cfg.allow_missing)
    prepare_out(cfg.out)
    with FolderLocks(cfg.out).plan():
        remove_temps(cfg.out, {fmt.MANIFEST_NAME})      # a killed writer's; we hold the lock
        had_plan = stored.exists()
        stored_fingerprint = read_plan(cfg.out).meta.get("input_fingerprint") \
            if had_plan and fingerprint else None
        plan = load_or_write(plan, cfg.out)
        if had_plan and fingerprint and stored_fingerprint != fingerprint:
            write_plan(plan, cfg.out)   # same plan from other input bytes: remember these bytes
    return plan


def _input_fingerprint(cfg: ShardConfig) -> str | None:
    """Hash of the manifest and labels bytes and every plan/sample parameter (None: folder)."""
    if cfg.manifest is None:
        return None
    digest = hashlib.sha256()
    for path in (cfg.manifest, cfg.labels):
        digest.update(fmt.file_digest(path)[1].encode() if path else b"-")
    digest.update(json.dumps([cfg.manifest_format, cfg.select_split, asdict(cfg.plan),
                              cfg.clip.as_dict(), str(cfg.videos.resolve())], sort_keys=True,
                             default=str).encode())
    return digest.hexdigest()[:16]


@dataclass
class _ShardJob:
    shard: int
    retry: bool
    todo: int


def _job(cfg: ShardConfig, plan: Plan, shard: int, ident: dict) -> _ShardJob | None:
    """What shard `shard` needs now: None if it is committed (and --retry-failed finds no failed
    row in it), a retry of its failed rows, or a full write. Decided again under the shard's lock,
    as another run may have committed it meanwhile."""
    files = fmt.ShardFiles.of(cfg.out, plan.split, shard)
    stats = committed_stats(files, ident)
    if stats is None:
        return _ShardJob(shard, False, plan.offsets[shard + 1] - plan.offsets[shard])
    if cfg.retry_failed and stats["failed"]:
        return _ShardJob(shard, True, stats["failed"])
    return None


def _open(cfg: ShardConfig, plan: Plan, job: _ShardJob, ident: dict,
          lock: FileLock) -> tuple[ShardWriter, list]:
    """Un-commit / clean the shard (whose lock this process holds), then a writer and the tasks
    that need decoding."""
    files = fmt.ShardFiles.of(cfg.out, plan.split, job.shard)
    tasks = plan.tasks(job.shard)
    rows = [(t.row, t.key) for t in tasks]
    reuse = _kept_rows(files) if job.retry else None
    if reuse is not None:
        with writing(files.stats):
            files.stats.unlink()            # the shard is partial from here on
            remove_temps(files.stats.parent, shard_names(files))
        fsync_dir(files.stats.parent)
        return ShardWriter(files, job.shard, rows, ident, lock, reuse), \
            [t for t in tasks if t.row not in reuse]
    remove_leftovers(files)
    return ShardWriter(files, job.shard, rows, ident, lock), tasks


def _kept_rows(files: fmt.ShardFiles) -> dict[int, Reused] | None:
    """The ok rows of a committed shard (its tar has the recorded size, see `committed_stats`);
    None (redo it all) if its record cannot be read. (`avsiam verify` checks the sha256: hashing
    every reused tar would read each one twice, as the rows are copied from it.)"""
    try:
        records = pq.read_table(files.record).to_pylist()
    except Exception:
        return None
    return {r["row"]: Reused(r["row"], r["key"], r["source_id"], r["path"], r["has_audio"],
                             r["has_video"], r.get("coverage"), r.get("window_source"))
            for r in records if r["status"] == fmt.STATUS_OK}


def run(cfg: ShardConfig) -> RunSummary:
    check_inputs(cfg)
    check_out(cfg.out)                   # nothing is written before the plan is known good
    first_run = not (cfg.out / fmt.MANIFEST_NAME).exists()
    plan = make_plan(cfg)           # a first run checks the files before writing the plan
    locks = FolderLocks(cfg.out)
    summary = RunSummary(plan)
    ident = identity(plan.split, plan.meta["plan_hash"], plan.meta["params_hash"])
    jobs = []
    for shard in range(cfg.task_index, plan.num_shards, cfg.num_tasks):
        job = _job(cfg, plan, shard, ident)
        if job is None:
            summary.shards_skipped += 1
        else:
            jobs.append(job)
    if not first_run and any(not job.retry for job in jobs):
        preflight.check_files(plan, cfg.videos, cfg.allow_missing)
    _remove_stale_temps(cfg.out, plan, locks)
    log = RunLog(cfg.out, cfg.task_index, cfg.num_tasks)
    log.write("start", task_index=cfg.task_index, num_tasks=cfg.num_tasks, workers=cfg.workers,
              shards_to_write=len(jobs), shards_skipped=summary.shards_skipped,
              rows_to_decode=sum(j.todo for j in jobs))
    try:
        _process(cfg, plan, jobs, summary, log, locks, ident)
        written = dataset_json.write_if_complete(cfg.out, plan)
        if written is not None:
            summary.dataset_json = cfg.out / fmt.DATASET_JSON
            log.write("dataset_json", written=written)
    finally:
        log.close()
    summary.task_totals = _task_totals(cfg, plan)
    return summary


def _remove_stale_temps(out: Path, plan: Plan, locks: FolderLocks) -> None:
    """Delete the temporary files of every shard of the split that no live run holds: those of
    killed writers (any task, any host)."""
    stems = {fmt.shard_stem(plan.split, k) for k in range(plan.num_shards)}
    names = os.listdir(out)
    stale: dict[str, set[str]] = {}
    for name in names:
        target = temp_target(name)
        if target is not None and target.split(".", 1)[0] in stems:
            stale.setdefault(target.split(".", 1)[0], set()).add(target)
    for stem, targets in sorted(stale.items()):
        lock = locks.shard(stem)
        if lock.try_acquire():
            try:
                remove_temps(out, targets, names)
            finally:
                lock.release()


def _task_totals(cfg: ShardConfig, plan: Plan) -> dict:
    """Rows, ok rows and failure counts of this task's committed shards (all runs so far)."""
    totals = {"rows": 0, "ok": 0, "failures": Counter(), "num_tasks": cfg.num_tasks}
    ident = identity(plan.split, plan.meta["plan_hash"], plan.meta["params_hash"])
    for shard in range(cfg.task_index, plan.num_shards, cfg.num_tasks):
        stats = committed_stats(fmt.ShardFiles.of(cfg.out, plan.split, shard), ident)
        if stats is not None:
            totals["rows"] += stats["rows"]
            totals["ok"] += stats["ok"]
            totals["failures"].update(stats["failures"])
    return totals


def _process(cfg: ShardConfig, plan: Plan, jobs: list[_ShardJob], summary: RunSummary,
             log: RunLog, locks: FolderLocks, ident: dict) -> None:
    """Write the shards of `jobs`, each under its lock. Round 1 takes the free shards in order
    and leaves the busy ones to the runs holding them; every later round first waits for one of
    those (with no shard of its own open, so two runs never wait for each other), then takes it
    if its holder stopped before committing it, and the other free ones."""
    context = ClipContext(str(cfg.videos), cfg.clip, cfg.limits, plan.meta["params_hash"])
    writers: dict[int, ShardWriter] = {}
    started: dict[int, float] = {}
    todo = {job.shard: job.todo for job in jobs}
    deferred: list[int] = []
    window = max(64, 16 * cfg.workers)     # rows submitted but not yet written (bounds memory)
    bar = clip_progress(sum(todo.values()), enabled=cfg.progress,
                        desc=f"shard {plan.split} task {cfg.task_index}/{cfg.num_tasks}")

    def waiting(shard: int, holder: str) -> None:
        log.write("wait", shard=shard, holder=holder)
        bar.write(f"avsiam shard: {fmt.shard_stem(plan.split, shard)} is being written by "
                   f"{holder}; waiting for it (redone here if that run stops before committing "
                   f"it)", file=sys.stderr)

    def claim(shard: int, wait: bool) -> list[ClipTask]:
        lock = locks.shard(fmt.shard_stem(plan.split, shard))
        if wait:
            lock.acquire(on_wait=lambda holder: waiting(shard, holder))
        elif not lock.try_acquire():
            deferred.append(shard)
            return []
        try:
            job = _job(cfg, plan, shard, ident)
            if job is None:             # committed by another run meanwhile
                summary.shards_skipped += 1
                bar.total -= todo.get(shard, 0)
                bar.refresh()
                log.write("skip", shard=shard, reason="committed by another run")
                lock.release()
                return []
            writer, tasks = _open(cfg, plan, job, ident, lock)
        except BaseException:
            lock.release()
            raise
        writers[shard], started[shard] = writer, time.monotonic()
        if writer.complete:
            commit(shard)
        return tasks

    def feed(queue: list[int], wait_first: bool) -> Iterator[tuple[int, ClipTask]]:
        for i, shard in enumerate(queue):
            yield from ((shard, task) for task in claim(shard, wait_first and i == 0))

    def commit(shard: int) -> None:
        writer = writers.pop(shard)
        try:
            stats = writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            writer.lock.release()
        seconds = time.monotonic() - started.pop(shard)
        summary.shards_written += 1
        log.write("shard", shard=shard, rows=stats["rows"], ok=stats["ok"],
                  failed=stats["failed"], tar_bytes=stats["tar_bytes"], seconds=round(seconds, 3),
                  decoded_per_s=round(stats["rows"] / max(seconds, 1e-9), 3))

    queue, wait_first, submitted = [job.shard for job in jobs], False, 0
    pool = WorkerPool(cfg.workers, context, cfg.task_timeout_s, cfg.recycle_after)
    try:
        with pool:
            while queue:
                deferred.clear()
                tasks = feed(queue, wait_first)
                pending = next(tasks, None)
                while pending is not None or pool.in_flight():
                    outstanding = pool.in_flight() + sum(w.waiting for w in writers.values())
                    while pending is not None and pool.idle() and outstanding < window:
                        batch = []
                        size = _batch_size(cfg, bar.total - submitted)
                        while pending is not None and len(batch) < size and outstanding < window:
                            batch.append((pending, pending[1]))
                            outstanding += 1
                            pending = next(tasks, None)
                        pool.submit_batch(batch)
                        submitted += len(batch)
                    for (shard, task), result in pool.wait(timeout=1.0):
                        if isinstance(result, WorkerFailure):
                            result = failed(task, result.reason)
                        writers[shard].add(result)
                        _count(summary, result)
                        bar.update(1)
                        bar.set_postfix(ok=summary.ok, failed=summary.failed, refresh=False)
                        if writers[shard].complete:
                            commit(shard)
                queue, wait_first = list(deferred), True
    except BaseException:
        for writer in writers.values():
            writer.abort()
            writer.lock.release()
        raise
    finally:
        bar.close()
        summary.resources = pool.usage.as_dict()
        log.write("summary", shards_written=summary.shards_written,
                  shards_skipped=summary.shards_skipped, rows=summary.rows, ok=summary.ok,
                  failed=summary.failed, resources=summary.resources)


def _batch_size(cfg: ShardConfig, left: int) -> int:
    """Rows given to a worker at once: --decode-batch, fewer near the end so that every worker
    still gets some of the last rows."""
    return max(1, min(cfg.decode_batch, -(-left // cfg.workers)))


def _count(summary: RunSummary, result: ClipResult) -> None:
    summary.rows += 1
    if result.status == fmt.STATUS_OK:
        summary.ok += 1
    else:
        summary.failed += 1
