"""Render a scene's frames with numpy straight into yuv420p (what the encoders take, so ffmpeg does
no colour conversion): a static background and textured moving sprites."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipeline.synth.scene import ObjectTrack, Scene

BRIGHTNESS_LEVELS = 16  # sprite brightness is quantised so sprites can be cached


def shape_mask(shape: str, side: int) -> np.ndarray:
    """bool [side, side]: the pixels covered by a shape centred in the square."""
    v, u = np.mgrid[0:side, 0:side].astype(np.float32)
    u = (u + 0.5) / side * 2 - 1
    v = (v + 0.5) / side * 2 - 1  # -1 at the top
    r2 = u * u + v * v
    if shape == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if shape == "circle":
        return r2 <= 0.95 ** 2
    if shape == "triangle":
        return (v <= 0.9) & (np.abs(u) <= (v + 1.0) * 0.5)
    if shape == "ring":
        return (r2 <= 0.95 ** 2) & (r2 >= 0.55 ** 2)
    if shape == "cross":
        bar_u, bar_v = np.abs(u) <= 0.3, np.abs(v) <= 0.3
        return (bar_u & (np.abs(v) <= 0.95)) | (bar_v & (np.abs(u) <= 0.95))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 0.95
    raise ValueError(f"unknown shape {shape!r}")


def texture_shade(texture: str, side: int) -> np.ndarray:
    """float32 [side, side]: 1 on the light parts of the texture, 0.5 on the dark ones."""
    v, u = np.mgrid[0:side, 0:side].astype(np.float32) / side
    if texture == "plain":
        dark = np.zeros((side, side), bool)
    elif texture == "striped":
        dark = np.floor((u + v) * 4).astype(np.int32) % 2 == 1
    elif texture == "checkered":
        dark = (np.floor(u * 4).astype(np.int32) + np.floor(v * 4).astype(np.int32)) % 2 == 1
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return np.where(dark, 0.5, 1.0).astype(np.float32)


def rgb_to_yuv420p(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB [H, W, 3] (H, W even) -> uint8 planes Y [H, W], U and V [H/2, W/2]; BT.601 limited range,
    as ffmpeg converts by default. Chroma is the mean of each 2x2 block."""
    r, g, b = (rgb[..., i].astype(np.float32) / 255.0 for i in range(3))
    y = 16.0 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128.0 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128.0 + 112.0 * r - 93.786 * g - 18.214 * b
    h, w = y.shape

    def half(plane: np.ndarray) -> np.ndarray:
        return plane.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    return tuple(np.clip(np.round(p), 0, 255).astype(np.uint8) for p in (y, half(u), half(v)))


class _Sprite:
    """One object's sprite planes and masks, cached by (side, brightness level); side is even."""

    def __init__(self, track: ObjectTrack) -> None:
        self.track = track
        self.masks: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.planes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def get(self, side: int, brightness: float) -> tuple[tuple, tuple]:
        """((luma mask, chroma mask), (Y, U, V)) for a sprite of `side` pixels."""
        if side not in self.masks:
            recipe = self.track.recipe
            mask = shape_mask(recipe.shape, side)
            half = side // 2
            chroma_mask = mask.reshape(half, 2, half, 2).mean(axis=(1, 3)) >= 0.5
            self.masks[side] = (mask, chroma_mask, texture_shade(recipe.texture, side))
        mask, chroma_mask, shade = self.masks[side]
        level = min(BRIGHTNESS_LEVELS, max(1, round(brightness * BRIGHTNESS_LEVELS)))
        if (side, level) not in self.planes:
            colour = self.track.rgb * (level / BRIGHTNESS_LEVELS)
            self.planes[(side, level)] = rgb_to_yuv420p(shade[..., None] * colour)
        return (mask, chroma_mask), self.planes[(side, level)]


class _Frame:
    """Views of the Y, U, V planes inside one flat yuv420p frame buffer."""

    def __init__(self, flat: np.ndarray, width: int, height: int) -> None:
        luma, chroma = width * height, width * height // 4
        self.planes = (flat[:luma].reshape(height, width),
                       flat[luma:luma + chroma].reshape(height // 2, width // 2),
                       flat[luma + chroma:].reshape(height // 2, width // 2))


def _paste(frame: _Frame, sprite: _Sprite, index: int) -> None:
    track = sprite.track
    side = 2 * max(2, int(round(track.size[index] / 2)))
    (mask, chroma_mask), planes = sprite.get(side, float(track.brightness[index]))
    height, width = frame.planes[0].shape
    # Even corner, so the chroma planes line up; clipped to the frame.
    x0 = 2 * int(round((track.x[index] - side / 2) / 2))
    y0 = 2 * int(round((track.y[index] - side / 2) / 2))
    sx0, sy0 = max(0, -x0), max(0, -y0)
    sx1, sy1 = min(side, width - x0), min(side, height - y0)
    if sx1 <= sx0 or sy1 <= sy0:
        return
    for plane, src, m, k in zip(frame.planes, planes, (mask, chroma_mask, chroma_mask), (1, 2, 2)):
        a0, b0, a1, b1 = sx0 // k, sy0 // k, sx1 // k, sy1 // k
        region = plane[(y0 // k) + b0:(y0 // k) + b1, (x0 // k) + a0:(x0 // k) + a1]
        np.copyto(region, src[b0:b1, a0:a1], where=m[b0:b1, a0:a1])


def frame_bytes(width: int, height: int) -> int:
    """Bytes of one yuv420p frame."""
    return width * height * 3 // 2


def render_frames(scene: Scene, chunk: int = 25) -> Iterator[np.ndarray]:
    """Yield uint8 [n, W*H*3/2] blocks of consecutive yuv420p frames (n <= chunk), in order.

    The yielded buffer is reused: consume (write) it before asking for the next block.
    """
    width, height = scene.width, scene.height
    background = np.concatenate([p.ravel() for p in rgb_to_yuv420p(scene.background)])
    sprites = [_Sprite(track) for track in scene.objects]
    buffer = np.empty((chunk, frame_bytes(width, height)), np.uint8)
    frames = [_Frame(buffer[i], width, height) for i in range(chunk)]
    for start in range(0, scene.num_frames, chunk):
        count = min(chunk, scene.num_frames - start)
        buffer[:count] = background
        for offset in range(count):
            for sprite in sprites:
                _paste(frames[offset], sprite, start + offset)
        yield buffer[:count]
