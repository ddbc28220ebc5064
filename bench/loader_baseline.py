"""The baseline for bench_loader.py: an AVSiam/CAV-MAE-style loader that decodes media per sample.

AVSiam's dataloader (inherited from CAV-MAE) loads each clip's audio and computes its Kaldi fbank
every time the sample is drawn, and reads a frame picture per draw. Here, on the raw clips, each
__getitem__ runs ffmpeg twice (the audio as 16 kHz mono float, and one of the 10 CAV-MAE frame
positions picked at random), computes torchaudio's kaldi.fbank with the CAV-MAE arguments, pads to
1024 frames and normalises with -5.081 / 4.4849, then Resize(224, bicubic) + CenterCrop(224) and
ImageNet normalisation of the frame. It yields what our pretrain mode yields.
"""
from __future__ import annotations

import json
import random
import subprocess

import numpy as np
import torch
from torch.utils.data import Dataset

FBANK_ARGS = dict(htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                  num_mel_bins=128, dither=0.0, frame_shift=10)
MEAN, STD = -5.081, 4.4849
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def ffmpeg_bytes(args: list[str], timeout: float = 60.0) -> bytes:
    done = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", *args],
                          capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {done.stderr.decode()[-300:]}")
    return done.stdout


def probe(path: str) -> dict:
    """Width, height, fps and duration of the first video stream (once per clip, not timed)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=width,height,avg_frame_rate:format=duration", "-of", "json", path],
                         capture_output=True, timeout=60, check=True).stdout
    info = json.loads(out)
    num, den = info["streams"][0]["avg_frame_rate"].split("/")
    return {"width": info["streams"][0]["width"], "height": info["streams"][0]["height"],
            "fps": float(num) / float(den), "duration": float(info["format"]["duration"])}


class AVSiamStyleClips(Dataset):
    """Per-sample media decoding, as the official research loader does its work."""

    def __init__(self, paths: list[str], audio_frames: int = 1024, image_size: int = 224,
                 num_frames: int = 10):
        self.paths = list(paths)
        self.info = [probe(p) for p in self.paths]
        self.audio_frames, self.image_size, self.num_frames = audio_frames, image_size, num_frames

    def __len__(self) -> int:
        return len(self.paths)

    def fbank(self, path: str) -> torch.Tensor:
        from torchaudio.compliance import kaldi

        pcm = ffmpeg_bytes(["-i", path, "-vn", "-ac", "1", "-ar", "16000", "-f", "f32le", "-"])
        wave = torch.from_numpy(np.frombuffer(pcm, dtype="<f4").copy()).unsqueeze(0)
        bank = kaldi.fbank(wave - wave.mean(), **FBANK_ARGS)
        pad = self.audio_frames - bank.shape[0]
        bank = torch.nn.functional.pad(bank, (0, 0, 0, pad)) if pad > 0 else bank[: self.audio_frames]
        return (bank - MEAN) / STD

    def frame(self, index: int) -> torch.Tensor:
        from torchvision.transforms import v2

        info = self.info[index]
        total = min(int(info["fps"] * 10), int(info["fps"] * info["duration"]))
        pick = random.randrange(self.num_frames) * total // self.num_frames
        raw = ffmpeg_bytes(["-ss", f"{pick / info['fps']:.3f}", "-i", self.paths[index],
                            "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        img = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        img = img.view(info["height"], info["width"], 3).permute(2, 0, 1)
        img = v2.functional.resize(img, self.image_size, interpolation=v2.InterpolationMode.BICUBIC)
        img = v2.functional.center_crop(img, [self.image_size, self.image_size]).float() / 255.0
        return v2.functional.normalize(img, IMAGENET_MEAN, IMAGENET_STD)

    def __getitem__(self, index: int) -> dict:
        return {"audio": self.fbank(self.paths[index]), "visual": self.frame(index)}
