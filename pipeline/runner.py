"""Run a sharding job: plan, pick this task's shards, decode in workers, write and commit in order.

Resume: a shard is committed iff its stats file exists; committed shards are skipped, any other
shard is redone from scratch (leftovers deleted first). `--retry-failed` un-commits shards that
have failed rows, re-decodes only those rows and copies the others from the old tar, which gives
the same bytes as a fresh run. Kill the job at any moment and re-run it: the result is the same.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from pipeline import dataset_json, preflight
from pipeline.clip import ClipContext, ClipResult, ClipTask, failed
from pipeline.config import ShardConfig
from pipeline.labels import read_labels, vocabulary_from
from pipeline.manifest import choose_split, read_manifest
from pipeline.params import params_hash
from pipeline.plan import Plan, build_plan, load_or_write, read_plan, write_plan
from pipeline.run_log import RunLog
from pipeline.shard_writer import (Reused, ShardWriter, fsync_dir, identity,
                                   is_committed, read_stats, remove_leftovers)
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
    the rows find their files (`pipeline.preflight`) before it writes anything."""
    fingerprint = _input_fingerprint(cfg)
    stored = cfg.out / fmt.MANIFEST_NAME
    stored_fingerprint = None
    if fingerprint and stored.exists():
        plan = read_plan(cfg.out)
        stored_fingerprint = plan.meta.get("input_fingerprint")
        if stored_fingerprint == fingerprint:
            return plan
    manifest = read_manifest(cfg.manifest, cfg.manifest_format, videos=cfg.videos,
                             extensions=cfg.plan.extensions)
    manifest = choose_split(manifest, cfg.select_split, cfg.manifest)
    vocabulary = read_labels(cfg.labels) if cfg.labels else vocabulary_from(manifest.labels)
    plan = build_plan(manifest, vocabulary, cfg.plan, cfg.clip, params_hash(cfg.clip.as_dict()),
                      videos=cfg.videos)
    plan.meta["input_fingerprint"] = fingerprint
    had_plan = stored.exists()
    if not had_plan:
        preflight.check_files(plan, cfg.videos, cfg.allow_missing)
    cfg.out.mkdir(parents=True, exist_ok=True)
    plan = load_or_write(plan, cfg.out)
    if had_plan and fingerprint and stored_fingerprint != fingerprint:
        write_plan(plan, cfg.out)       # same plan from other input bytes: remember these bytes
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


def _select(cfg: ShardConfig, plan: Plan, summary: RunSummary) -> list[_ShardJob]:
    jobs = []
    for shard in range(cfg.task_index, plan.num_shards, cfg.num_tasks):
        files = fmt.ShardFiles.of(cfg.out, plan.split, shard)
        size = plan.offsets[shard + 1] - plan.offsets[shard]
        if not is_committed(files):
            jobs.append(_ShardJob(shard, False, size))
            continue
        try:
            failed_rows = read_stats(files)["failed"] if cfg.retry_failed else 0
        except (OSError, ValueError, KeyError):   # a damaged stats file: redo the shard
            jobs.append(_ShardJob(shard, False, size))
            continue
        if failed_rows:
            jobs.append(_ShardJob(shard, True, failed_rows))
        else:
            summary.shards_skipped += 1
    return jobs


def _open(cfg: ShardConfig, plan: Plan, job: _ShardJob, ident: dict) -> tuple[ShardWriter, list]:
    """Un-commit / clean the shard, then a writer and the tasks that need decoding."""
    files = fmt.ShardFiles.of(cfg.out, plan.split, job.shard)
    tasks = plan.tasks(job.shard)
    rows = [(t.row, t.key) for t in tasks]
    reuse = _kept_rows(files) if job.retry else None
    if reuse is not None:
        files.stats.unlink()            # the shard is partial from here on
        fsync_dir(files.stats.parent)
        return ShardWriter(files, job.shard, rows, ident, reuse), \
            [t for t in tasks if t.row not in reuse]
    files.stats.unlink(missing_ok=True)
    remove_leftovers(files)
    return ShardWriter(files, job.shard, rows, ident), tasks


def _kept_rows(files: fmt.ShardFiles) -> dict[int, Reused] | None:
    """The ok rows of a committed shard; None (redo it all) if its record cannot be read or its
    tar does not have the size its stats file records. (Only the size: hashing every reused tar
    would read each one twice, as the rows are copied from it; `avsiam verify` checks the sha256.)"""
    try:
        records = pq.read_table(files.record).to_pylist()
        if read_stats(files)["tar_bytes"] != files.tar.stat().st_size:
            return None
    except Exception:
        return None
    return {r["row"]: Reused(r["row"], r["key"], r["source_id"], r["path"], r["has_audio"],
                             r["has_video"], r.get("coverage"), r.get("window_source"))
            for r in records if r["status"] == fmt.STATUS_OK}


def run(cfg: ShardConfig) -> RunSummary:
    first_run = not (cfg.out / fmt.MANIFEST_NAME).exists()
    plan = make_plan(cfg)           # a first run checks the files before writing the plan
    summary = RunSummary(plan)
    jobs = _select(cfg, plan, summary)
    if not first_run and any(not job.retry for job in jobs):
        preflight.check_files(plan, cfg.videos, cfg.allow_missing)
    log = RunLog(cfg.out, cfg.task_index, cfg.num_tasks)
    log.write("start", task_index=cfg.task_index, num_tasks=cfg.num_tasks, workers=cfg.workers,
              shards_to_write=len(jobs), shards_skipped=summary.shards_skipped,
              rows_to_decode=sum(j.todo for j in jobs))
    try:
        _process(cfg, plan, jobs, summary, log)
    finally:
        log.close()
    if dataset_json.all_committed(cfg.out, plan):
        summary.dataset_json = dataset_json.write(cfg.out, dataset_json.build(cfg.out, plan))
    summary.task_totals = _task_totals(cfg, plan)
    return summary


def _task_totals(cfg: ShardConfig, plan: Plan) -> dict:
    """Rows, ok rows and failure counts of this task's committed shards (all runs so far)."""
    totals = {"rows": 0, "ok": 0, "failures": Counter(), "num_tasks": cfg.num_tasks}
    for shard in range(cfg.task_index, plan.num_shards, cfg.num_tasks):
        files = fmt.ShardFiles.of(cfg.out, plan.split, shard)
        if is_committed(files):
            stats = read_stats(files)
            totals["rows"] += stats["rows"]
            totals["ok"] += stats["ok"]
            totals["failures"].update(stats["failures"])
    return totals


def _process(cfg: ShardConfig, plan: Plan, jobs: list[_ShardJob], summary: RunSummary,
             log: RunLog) -> None:
    from tqdm import tqdm

    ident = identity(plan.split, plan.meta["plan_hash"], plan.meta["params_hash"])
    context = ClipContext(str(cfg.videos), cfg.clip, cfg.limits, plan.meta["params_hash"])
    writers: dict[int, ShardWriter] = {}
    started: dict[int, float] = {}
    window = max(64, 16 * cfg.workers)     # rows submitted but not yet written (bounds memory)

    def feed() -> Iterator[tuple[int, ClipTask]]:
        for job in jobs:
            writer, tasks = _open(cfg, plan, job, ident)
            writers[job.shard], started[job.shard] = writer, time.monotonic()
            if writer.complete:
                commit(job.shard)
            yield from ((job.shard, task) for task in tasks)

    def commit(shard: int) -> None:
        stats = writers.pop(shard).commit()
        seconds = time.monotonic() - started.pop(shard)
        summary.shards_written += 1
        log.write("shard", shard=shard, rows=stats["rows"], ok=stats["ok"],
                  failed=stats["failed"], tar_bytes=stats["tar_bytes"], seconds=round(seconds, 3),
                  decoded_per_s=round(stats["rows"] / max(seconds, 1e-9), 3))

    bar = tqdm(total=sum(j.todo for j in jobs), unit="clip", disable=not cfg.progress,
               desc=f"shard {plan.split} task {cfg.task_index}/{cfg.num_tasks}", smoothing=0.05)
    tasks = feed()
    pending = next(tasks, None)
    pool = WorkerPool(cfg.workers, context, cfg.task_timeout_s, cfg.recycle_after)
    try:
        with pool:
            while pending is not None or pool.in_flight():
                outstanding = pool.in_flight() + sum(w.waiting for w in writers.values())
                while pending is not None and pool.idle() and outstanding < window:
                    shard, task = pending
                    pool.submit((shard, task), task)
                    outstanding += 1
                    pending = next(tasks, None)
                for (shard, task), result in pool.wait(timeout=1.0):
                    if isinstance(result, WorkerFailure):
                        result = failed(task, result.reason)
                    writers[shard].add(result)
                    _count(summary, result)
                    bar.update(1)
                    bar.set_postfix(ok=summary.ok, failed=summary.failed, refresh=False)
                    if writers[shard].complete:
                        commit(shard)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        bar.close()
        summary.resources = pool.usage.as_dict()
        log.write("summary", shards_written=summary.shards_written,
                  shards_skipped=summary.shards_skipped, rows=summary.rows, ok=summary.ok,
                  failed=summary.failed, resources=summary.resources)


def _count(summary: RunSummary, result: ClipResult) -> None:
    summary.rows += 1
    if result.status == fmt.STATUS_OK:
        summary.ok += 1
    else:
        summary.failed += 1
