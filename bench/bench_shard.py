"""Sharding throughput: clips/s per core of `avsiam shard` against two baselines, same clips.

- ours (1 and 2 workers): the whole stage (probe, one ffmpeg decode per clip, fbank, JPEG, tar,
  record, commit) through `pipeline.runner.run`; the worker forkserver is warmed first.
- (a) floor: one bare ffmpeg process per clip running exactly our decode command (same seek,
  filter graph and outputs, written to /dev/null), no probe and no Python work.
- (b) CAV-MAE style: per clip one ffmpeg pass for the 16 kHz wav and one for 10 full-size JPEG
  frames, then the fbank and PIL resize + centre crop + re-encode in Python.

Clips: 10-s 640x360 H.264 (x264 veryfast, crf 23, 25 fps, noisy test pattern) + AAC 44.1 kHz
stereo. Each figure is the median of --repeats runs.

    .venv/bin/python bench/bench_shard.py --clips 24 --repeats 3 --work /tmp/bench_shard
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import frames as frames_mod  # noqa: E402
from pipeline import media  # noqa: E402
from pipeline.params import ClipParams, MediaLimits  # noqa: E402


def make_clips(folder: Path, count: int, seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        path = folder / f"clip{i:04d}.mp4"
        if not path.exists():
            video = (f"testsrc2=s=640x360:r=25:d={seconds},hue=h={i * 37 % 360},"
                     f"noise=alls=12:allf=t")
            audio = f"sine=f={220 + 20 * i}:r=44100:d={seconds},aformat=channel_layouts=stereo"
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", video, "-f",
                            "lavfi", "-i", audio, "-c:v", "libx264", "-preset", "veryfast",
                            "-crf", "23", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
                            "-shortest", str(path.with_suffix(".tmp.mp4"))], check=True)
            path.with_suffix(".tmp.mp4").rename(path)
        clips.append(path)
    return clips


def _cpu(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_ours(clips: list[Path], workers: int, out: Path) -> tuple[float, float]:
    from pipeline.config import ShardConfig
    from pipeline.plan import PlanParams
    from pipeline.runner import run

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    manifest = out.parent / "bench_manifest.csv"
    manifest.write_text("id,path\n" + "".join(f"{c.stem},{c}\n" for c in clips))
    cfg = ShardConfig(out=out, videos=clips[0].parent, manifest=manifest, workers=workers,
                      plan=PlanParams(samples_per_shard=max(len(clips) // 4, 1)), progress=False)
    began, cpu = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
    summary = run(cfg)
    elapsed = time.perf_counter() - began
    assert summary.ok == len(clips), f"{summary.failed} clips failed; see {out}"
    return elapsed, summary.resources["worker_cpu_s"] + _cpu(resource.RUSAGE_SELF) - cpu


def floor_commands(clips: list[Path]) -> list[list[str]]:
    params, limits = ClipParams(), MediaLimits()
    commands = []
    for clip in clips:
        info = media.probe(clip, params, limits)
        total = frames_mod.frame_total(info.video.fps, min(10.0, info.duration))
        indices = sorted(set(frames_mod.frame_indices(total, params.num_frames)))
        command = media.decode_command(clip, info, start=0.0, seconds=min(10.0, info.duration),
                                       frame_indices=indices, params=params, limits=limits,
                                       video_url="/dev/null", audio_url="/dev/null")
        commands.append(command[:1] + ["-y"] + command[1:])
    return commands


def run_parallel(commands: list[list[str]], procs: int) -> tuple[float, float]:
    began, cpu = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN)
    running: list[subprocess.Popen] = []
    for command in commands:
        while len(running) >= procs:
            running.pop(0).wait()
        running.append(subprocess.Popen(command, stdin=subprocess.DEVNULL))
    for proc in running:
        proc.wait()
        assert proc.returncode == 0
    return time.perf_counter() - began, _cpu(resource.RUSAGE_CHILDREN) - cpu


def run_cavmae(clips: list[Path], work: Path) -> tuple[float, float]:
    """Two ffmpeg passes per clip (audio, frames), then fbank and frame resizing in Python."""
    import torch
    from PIL import Image

    from pipeline.fbank import compute_fbank

    torch.set_num_threads(1)
    size = ClipParams().frame_size
    began = time.perf_counter()
    cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
    for clip in clips:
        folder = work / clip.stem
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", "-i", str(clip),
                        "-vn", "-ac", "1", "-ar", "16000", str(folder / "audio.wav")], check=True)
        chosen = "+".join(f"eq(n,{i})" for i in frames_mod.frame_indices(250, 10))
        subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", "-i", str(clip),
                        "-vf", f"select='{chosen}'", "-vsync", "passthrough", "-q:v", "2",
                        str(folder / "frame_%02d.jpg")], check=True)
        with wave.open(str(folder / "audio.wav")) as handle:
            compute_fbank(handle.readframes(handle.getnframes()))
        for jpg in sorted(folder.glob("frame_*.jpg")):
            image = Image.open(jpg).convert("RGB")
            scale = size / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)),
                                 Image.BICUBIC)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image.crop((left, top, left + size, top + size)).save(io.BytesIO(), "JPEG", quality=90)
    return (time.perf_counter() - began,
            _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_shard"))
    parser.add_argument("--runs", default="ours_w1,ours_w2,floor_p1,floor_p2,cavmae_p1",
                        help="which runs to time (comma-separated)")
    args = parser.parse_args()

    clips = make_clips(args.work / "clips", args.clips, args.seconds)
    commands = floor_commands(clips)
    run_ours(clips[:2], 2, args.work / "warm")                 # start the worker forkserver
    jobs = {"ours_w1": (1, lambda: run_ours(clips, 1, args.work / "out")),
            "ours_w2": (2, lambda: run_ours(clips, 2, args.work / "out")),
            "floor_p1": (1, lambda: run_parallel(commands, 1)),
            "floor_p2": (2, lambda: run_parallel(commands, 2)),
            "cavmae_p1": (1, lambda: run_cavmae(clips, args.work / "cavmae"))}
    jobs = {k: v for k, v in jobs.items() if k in args.runs.split(",")}
    wall: dict[str, list[float]] = {k: [] for k in jobs}
    cpu: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(args.repeats):                   # interleaved, so all see the same conditions
        for key, (_, job) in jobs.items():
            seconds, cpu_seconds = job()
            wall[key].append(seconds)
            cpu[key].append(cpu_seconds)
    n = args.clips
    per_core = {k: n / statistics.median(wall[k]) / jobs[k][0] for k in jobs}
    per_cpu_s = {k: n / statistics.median(cpu[k]) for k in jobs}
    ratio = lambda a, b, table: table[a] / table[b] if a in table and b in table else None  # noqa
    median = {k: statistics.median(v) for k, v in wall.items()}
    report = {
        "machine": f"{platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "clips": n, "seconds": args.seconds, "repeats": args.repeats,
        "wall_s": wall, "cpu_s": cpu,
        "clips_per_s_per_core": per_core, "clips_per_cpu_s": per_cpu_s,
        "ours_w1_vs_floor_p1": ratio("ours_w1", "floor_p1", per_core),
        "ours_vs_floor_cpu": ratio("ours_w1", "floor_p1", per_cpu_s),
        "speedup_w2_vs_w1": ratio("ours_w1", "ours_w2", median),
        "floor_speedup_p2_vs_p1": ratio("floor_p1", "floor_p2", median),
        "ours_w1_vs_cavmae": ratio("ours_w1", "cavmae_p1", per_core),
        "ours_vs_cavmae_cpu": ratio("ours_w1", "cavmae_p1", per_cpu_s),
    }
    print(json.dumps(report, indent=1))
    print("\n| run | median wall s | clips/s per core (wall) | clips per CPU-s |")
    print("|---|---|---|---|")
    for key in jobs:
        print(f"| {key} | {statistics.median(wall[key]):.2f} | {per_core[key]:.3f} | "
              f"{per_cpu_s[key]:.3f} |")


if __name__ == "__main__":
    main()
