"""Speed of `avsiam synth`: clips per second, CPU seconds per clip, and the time 400 clips would take.

Wall-clock figures depend on what else runs on the machine; CPU seconds per clip (of all the child
processes: pool workers and ffmpeg) do not, and 400 x that / workers is the time on free cores.

Baseline, measured in the same run with the same worker count: one plain ffmpeg process per clip
encoding ffmpeg's own generated test pattern and tone (lavfi testsrc2 + sine) at the same size,
duration, frame rate, codecs and options. The ratio says what rendering the scenes in numpy, piping
them and synthesising the sound cost over that encode-only floor.

    .venv/bin/python bench/bench_synth.py --clips 100 --repeats 3 --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ffmpeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.synth import SynthConfig, write_dataset  # noqa: E402
from pipeline.synth.encode import BITEXACT, FORMATS  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(run) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all finished child processes) of run()."""
    cpu, start = _children_cpu(), time.perf_counter()
    run()
    return time.perf_counter() - start, _children_cpu() - cpu


def _baseline_command(path: Path, config: SynthConfig) -> list[str]:
    width, height = config.size
    container = FORMATS["mp4"]
    video = ffmpeg.input(f"testsrc2=s={width}x{height}:r={config.fps}:d={config.seconds}",
                         format="lavfi")
    audio = ffmpeg.input(f"sine=frequency=440:sample_rate={container.sample_rate}:"
                         f"duration={config.seconds}", format="lavfi")
    options = {**container.video, **container.audio, **BITEXACT, "format": container.muxer,
               "threads": 1, "g": 2 * config.fps, "ac": 2}
    stream = ffmpeg.output(video.video, audio.audio, str(path), **options)
    return stream.global_args("-hide_banner", "-nostats", "-loglevel", "error") \
        .overwrite_output().compile(cmd="ffmpeg")


def _baseline(config: SynthConfig, folder: Path) -> None:
    folder.mkdir(parents=True)

    def one(index: int) -> None:
        subprocess.run(_baseline_command(folder / f"{index}.mp4", config), check=True,
                       stdin=subprocess.DEVNULL, timeout=config.clip_timeout_s)

    with ThreadPoolExecutor(config.workers) as pool:
        list(pool.map(one, range(config.clips)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--formats", default="mp4")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    rows = {"synth": [], "baseline": []}
    scratch = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        for repeat in range(args.repeats):
            config = SynthConfig(out=scratch / f"synth{repeat}", clips=args.clips,
                                 classes=args.classes, seed=repeat, seconds=args.seconds,
                                 size=args.size, formats=args.formats, fps=args.fps,
                                 workers=args.workers)
            rows["synth"].append(_measure(lambda: write_dataset(config, progress=False)))
            rows["baseline"].append(_measure(lambda: _baseline(config, scratch / f"base{repeat}")))
            shutil.rmtree(scratch / f"synth{repeat}")
            shutil.rmtree(scratch / f"base{repeat}")
            print(f"repeat {repeat}: synth {rows['synth'][-1][0]:.2f} s, "
                  f"baseline {rows['baseline'][-1][0]:.2f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    result = {"load_average_after": os.getloadavg()[0], "clips": args.clips,
              "seconds": args.seconds, "size": args.size, "fps": args.fps,
              "formats": args.formats, "workers": args.workers, "repeats": args.repeats,
              "cpus": os.cpu_count()}
    for name, runs in rows.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        result[name] = {"wall_s": round(wall, 2), "clips_per_s": round(args.clips / wall, 2),
                        "cpu_s_per_clip": round(cpu / args.clips, 3),
                        "projected_400_clips_s": round(400 * wall / args.clips, 1),
                        # what 400 clips take when `workers` cores are free for this job alone
                        "cpu_bound_400_clips_s": round(400 * cpu / args.clips / args.workers, 1)}
    result["synth_over_baseline_time"] = round(
        result["synth"]["wall_s"] / result["baseline"]["wall_s"], 2)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
