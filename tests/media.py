"""Tiny generated media for the data tests and loader benchmarks (plain functions, no fixtures).

Frames are built so that every frame differs clearly from its neighbours (a bright square moves
4 px per frame and the green level steps by 37 per frame, modulo 216) while staying smooth enough that
lossy codecs keep it: after decoding, "frame i" can be told from "frame i +- 1" by a margin far
above the codec and colour-conversion error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CODECS = {"vp9": ("libvpx-vp9", ".webm"), "h264": ("libx264", ".mp4"), "mpeg4": ("mpeg4", ".avi")}


def frame_pattern(n: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """``[n, H, W, 3]`` uint8 frames, each one distinct."""
    rng = np.random.default_rng(seed)
    base = np.zeros((height, width, 3), np.float32)
    base[..., 0] = np.linspace(30, 220, width)[None, :]
    base[..., 2] = np.linspace(220, 30, height)[:, None]
    base += rng.uniform(-20, 20, size=3)
    frames = np.empty((n, height, width, 3), np.uint8)
    side = max(6, min(height, width) // 5)
    for i in range(n):
        img = base.copy()
        img[..., 1] = 20 + (37 * i) % 216  # distinct for 216 frames; neighbours differ by >= 37 levels
        y = (3 * i) % (height - side)
        x = (4 * i) % (width - side)
        img[y : y + side, x : x + side] = 255
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_video(path: str | Path, frames: np.ndarray, codec: str = "vp9", rate: int = 25,
                options: dict[str, str] | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Encode ``frames`` ([n, H, W, 3] uint8, even H and W) with PyAV; ``codec``: vp9, h264, mpeg4;
    ``options`` replace the encoder options (e.g. ``{"preset": "medium"}``: H.264 with B-frames);
    ``metadata``: container tags."""
    import av

    name, _ = CODECS[codec]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        out.metadata.update(metadata or {})
        stream = out.add_stream(name, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "vp9":  # near-lossless, fastest settings: tests compare decoded frames
            stream.options = {"crf": "4", "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
        elif codec == "h264":
            stream.options = {"crf": "4", "preset": "ultrafast"}
        else:  # MPEG-4 part 2 has no crf: a bit rate far above what 64x48 needs
            stream.bit_rate = 8_000_000
        if options is not None:
            stream.options = options
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_frame_folder(folder: str | Path, frames: np.ndarray, quality: int = 95) -> Path:
    """``img_00001.jpg`` ... (1-based, like the FSAR frame dumps) with PIL."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(frames, 1):
        Image.fromarray(img).save(folder / f"img_{i:05d}.jpg", quality=quality)
    return folder


def make_benchmark(root: str | Path, classes: dict[str, list[str]] | None = None, codec: str = "h264",
                   n_frames: int = 16, size: tuple[int, int] = (48, 64), frame_folders: bool = False) -> dict:
    """An HMDB-style tree ``root/videos/<class>/<name><ext>`` (or frame folders) plus split lists of
    all three formats in ``root/splits``; returns {"paths": {(class, name): path}, "frames": {...}}.

    Classes map split -> class folders; each class gets 3 videos ``<class>_v<k>``.
    """
    root = Path(root)
    classes = classes or {"train": ["brush_hair", "ApplyEyeMakeup", "catch"], "test": ["kick_ball", "Archery"]}
    _, ext = CODECS[codec]
    paths, frames = {}, {}
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, names in classes.items():
        indexed, named, ids = [], [], []
        for c, cls in enumerate(sorted(names)):
            for k in range(3):
                vid = f"{cls}_v{k}"
                seed = len(paths)
                data = frame_pattern(n_frames + k, *size, seed=seed)  # lengths differ per video
                rel = f"videos/{cls}/{vid}{ext}"
                if frame_folders:
                    p = write_frame_folder(root / f"videos/{cls}/{vid}", data)
                else:
                    p = write_video(root / rel, data, codec)
                paths[(cls, vid)], frames[(cls, vid)] = p, data
                indexed.append(f"{split}{c}//{rel}")
                named.append(f"{cls}/{vid}")
                ids.append(f"{split}{c}/{vid}")
        (root / "splits" / f"{split}_few_shot.txt").write_text("\n".join(indexed) + "\n")
        (root / "splits" / f"{split}list03.txt").write_text("\n".join(named) + "\n")
        (root / "splits" / f"{split}_ids.txt").write_text("\n".join(ids) + "\n")
    return {"paths": paths, "frames": frames}
