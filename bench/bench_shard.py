"""Sharding throughput: CPU seconds per clip of `avsiam shard` against two baselines, same clips.

- ours (1 and 2 workers): the whole stage (probe, ffmpeg decode of the stored frames' candidates
  with non-reference frames skipped where possible, 4 clips per ffmpeg process, fbank, JPEG,
  tar, record, commit) through `pipeline.runner.run`; the worker forkserver is warmed first.
  `ours_w1_b1`: the same with --decode-batch 1 (one ffmpeg process per clip).
- (a) floor: the naive single pass, one bare ffmpeg process per clip decoding every frame (fps
  filter + select of the CAV-MAE indices, same resize, same outputs, written to /dev/null), no
  probe and no Python work.
- (b) CAV-MAE style: per clip one ffmpeg pass for the 16 kHz wav and one for 10 full-size JPEG
  frames, then the fbank and PIL resize + centre crop + re-encode in Python.

Corpora (10-s clips, AAC 44.1 kHz stereo unless said):
- today: 640x360 H.264 x264 veryfast crf 23 (B-frames in a pyramid), noisy test pattern (~7 Mbit/s)
- allp: the same with -bf 0 (I and P frames only)
- bf360 / bf720: x264 -preset medium -bf 3 -g 90 crf 23 at 640x360 / 1280x720, moving test
  pattern with light noise (~1 / ~3 Mbit/s, YouTube-like)
- vp9: 640x360 VP9 (libvpx realtime, 1 Mbit/s) + Opus in WebM
Each figure is the median of --repeats runs, all runs interleaved.

    .venv/bin/python bench/bench_shard.py --clips 8 --repeats 3 --work /tmp/bench_shard
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


_X264 = ["-c:v", "libx264", "-crf", "23", "-pix_fmt", "yuv420p"]
_AAC = ["-c:a", "aac", "-b:a", "128k"]
CORPORA = {   # name: (size, noise, codec arguments, extension)
    "today": ("640x360", 12, _X264 + ["-preset", "veryfast"] + _AAC, "mp4"),
    "allp": ("640x360", 12, _X264 + ["-preset", "veryfast", "-bf", "0"] + _AAC, "mp4"),
    "bf360": ("640x360", 4, _X264 + ["-preset", "medium", "-bf", "3", "-g", "90"] + _AAC, "mp4"),
    "bf720": ("1280x720", 4, _X264 + ["-preset", "medium", "-bf", "3", "-g", "90"] + _AAC, "mp4"),
    "vp9": ("640x360", 4, ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
                           "-b:v", "1M", "-c:a", "libopus"], "webm"),
}


def make_clips(folder: Path, count: int, seconds: float, corpus: str = "today") -> list[Path]:
    size, noise, codec, ext = CORPORA[corpus]
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        path = folder / f"clip{i:04d}.{ext}"
        if not path.exists():
            video = (f"testsrc2=s={size}:r=25:d={seconds},hue=h={i * 37 % 360},"
                     f"noise=alls={noise}:allf=t")
            audio = f"sine=f={220 + 20 * i}:r=44100:d={seconds},aformat=channel_layouts=stereo"
            temp = path.with_name(f"tmp.{path.name}")
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", video, "-f",
                            "lavfi", "-i", audio, *codec, "-shortest", str(temp)], check=True)
            temp.rename(path)
        clips.append(path)
    return clips


def _cpu(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_ours(clips: list[Path], workers: int, out: Path,
             decode_batch: int = 4) -> tuple[float, float]:
    from pipeline.config import ShardConfig
    from pipeline.plan import PlanParams
    from pipeline.runner import run

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    manifest = out.parent / "bench_manifest.csv"
    manifest.write_text("id,path\n" + "".join(f"{c.stem},{c}\n" for c in clips))
    cfg = ShardConfig(out=out, videos=clips[0].parent, manifest=manifest, workers=workers,
                      plan=PlanParams(samples_per_shard=max(len(clips) // 4, 1)), progress=False,
                      decode_batch=decode_batch)
    began, cpu = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
    summary = run(cfg)
    elapsed = time.perf_counter() - began
    assert summary.ok == len(clips), f"{summary.failed} clips failed; see {out}"
    return elapsed, summary.resources["worker_cpu_s"] + _cpu(resource.RUSAGE_SELF) - cpu


def floor_commands(clips: list[Path]) -> list[list[str]]:
    """The naive single pass: every frame decoded, resampled at the stream's fps, the CAV-MAE
    indices selected by number, resized as ours; audio as ours."""
    params, limits = ClipParams(), MediaLimits()
    size = params.frame_size
    commands = []
    for clip in clips:
        info = media.probe(clip, params, limits)
        seconds = min(10.0, info.duration)
        total = frames_mod.frame_total(info.video.fps, seconds)
        chosen = "+".join(f"eq(n,{i})" for i in
                          sorted(set(frames_mod.frame_indices(total, params.num_frames))))
        graph = (f"[0:{info.video.index}]fps={info.video.fps:.6f},select='{chosen}',"
                 f"scale='if(lt(iw,ih),{size},-1)':'if(lt(iw,ih),-1,{size})':flags=bicubic,"
                 f"crop={size}:{size}[v]")
        commands.append(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                         "-threads", "1", "-t", f"{seconds:.6f}", "-i", str(clip),
                         "-filter_complex", graph, "-filter_complex_threads", "1",
                         "-map", "[v]", "-f", "rawvideo", "-pix_fmt", "rgb24", "-vsync",
                         "passthrough", "-threads", "1", "/dev/null",
                         "-map", f"0:{info.audio.index}", "-f", "s16le", "-ac", "1", "-ar",
                         "16000", "/dev/null"])
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
    parser.add_argument("--clips", type=int, default=8, help="clips per corpus")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_shard"))
    parser.add_argument("--corpora", default=",".join(CORPORA),
                        help=f"comma-separated, of {', '.join(CORPORA)}")
    parser.add_argument("--runs", default="ours_w1,ours_w2,floor_p1,floor_p2,cavmae_p1",
                        help="which runs to time (comma-separated)")
    args = parser.parse_args()

    corpora = args.corpora.split(",")
    runs = args.runs.split(",")
    jobs: dict[tuple[str, str], tuple[int, object]] = {}
    for corpus in corpora:
        clips = make_clips(args.work / "clips" / corpus, args.clips, args.seconds, corpus)
        commands = floor_commands(clips)
        out = args.work / "out" / corpus
        table = {"ours_w1": (1, lambda c=clips, o=out: run_ours(c, 1, o)),
                 "ours_w2": (2, lambda c=clips, o=out: run_ours(c, 2, o)),
                 "ours_w1_b1": (1, lambda c=clips, o=out: run_ours(c, 1, o, decode_batch=1)),
                 "floor_p1": (1, lambda c=commands: run_parallel(c, 1)),
                 "floor_p2": (2, lambda c=commands: run_parallel(c, 2)),
                 "cavmae_p1": (1, lambda c=clips, w=args.work / "cavmae": run_cavmae(c, w))}
        jobs.update({(corpus, k): v for k, v in table.items() if k in runs})
    run_ours(make_clips(args.work / "clips" / corpora[0], 2, args.seconds, corpora[0]), 2,
             args.work / "warm")                           # start the worker forkserver
    wall: dict[tuple[str, str], list[float]] = {k: [] for k in jobs}
    cpu: dict[tuple[str, str], list[float]] = {k: [] for k in jobs}
    for _ in range(args.repeats):                   # interleaved, so all see the same conditions
        for key, (_, job) in jobs.items():
            seconds, cpu_seconds = job()
            wall[key].append(seconds)
            cpu[key].append(cpu_seconds)
    n = args.clips
    cpu_per_clip = {k: statistics.median(v) / n for k, v in cpu.items()}
    wall_med = {k: statistics.median(v) for k, v in wall.items()}
    report = {"machine": f"{platform.node()}, {os.cpu_count()} cores, "
                         f"load {os.getloadavg()[0]:.1f}",
              "clips_per_corpus": n, "seconds": args.seconds, "repeats": args.repeats,
              "cpu_s": {f"{c}/{r}": v for (c, r), v in cpu.items()},
              "wall_s": {f"{c}/{r}": v for (c, r), v in wall.items()}}
    print(json.dumps(report, indent=1))

    def ratio(table, corpus, a, b):
        if (corpus, a) in table and (corpus, b) in table:
            return f"{table[(corpus, b)] / table[(corpus, a)]:.2f}x"
        return "-"

    print("\n| corpus | run | median CPU-s per clip | median wall s |")
    print("|---|---|---|---|")
    for (corpus, run), value in cpu_per_clip.items():
        print(f"| {corpus} | {run} | {value:.3f} | {wall_med[(corpus, run)]:.2f} |")
    print("\n| corpus | ours vs floor (CPU, w1) | ours vs CAV-MAE (CPU, w1) | "
          "w2 vs w1 (wall) | floor p2 vs p1 (wall) |")
    print("|---|---|---|---|---|")
    for corpus in corpora:
        print(f"| {corpus} | {ratio(cpu_per_clip, corpus, 'ours_w1', 'floor_p1')} | "
              f"{ratio(cpu_per_clip, corpus, 'ours_w1', 'cavmae_p1')} | "
              f"{ratio(wall_med, corpus, 'ours_w2', 'ours_w1')} | "
              f"{ratio(wall_med, corpus, 'floor_p2', 'floor_p1')} |")


if __name__ == "__main__":
    main()
