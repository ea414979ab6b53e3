"""Look at events the way the network will: binned frames rendered to PNG or GIF.

A frame is drawn on a grey background, ON counts pushing a pixel towards
white and OFF counts towards black (the usual DVS rendering), each scaled by
the frame's 99th-percentile count so a single hot pixel doesn't wash out the
rest. A PNG gets a grid of the first frames, a GIF one frame per image at the
recording's own pace; with a display available `--show` opens a window too.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ConfigError

GIF_FRAME_LIMIT = 300
PNG_GRID_LIMIT = 16


def frame_to_rgb(frame: np.ndarray) -> np.ndarray:
    """(P, H, W) counts -> (H, W, 3) uint8: grey background, ON brighter, OFF darker."""
    counts = frame.astype(np.float32)
    if counts.shape[0] == 2:
        signed = counts[1] - counts[0]
    else:
        signed = counts[0]
    scale = np.percentile(np.abs(signed[signed != 0]), 99) if np.any(signed) else 1.0
    scale = max(float(scale), 1.0)
    grey = 0.5 + 0.5 * np.clip(signed / scale, -1.0, 1.0)
    rgb = (np.repeat(grey[..., None], 3, axis=2) * 255).round().astype(np.uint8)
    return rgb


def render_frames(frames: np.ndarray, out: str | os.PathLike, time_window_us: float,
                  title: str = "") -> Path:
    """Write frames (T, P, H, W) as a PNG grid or an animated GIF, chosen by the suffix."""
    from PIL import Image

    out = Path(out)
    suffix = out.suffix.lower()
    if len(frames) == 0:
        raise ConfigError(f"{title or 'input'}: no frames to render (no events?)")
    images = [frame_to_rgb(f) for f in frames]
    if suffix == ".gif":
        images = images[:GIF_FRAME_LIMIT]
        height, width = images[0].shape[:2]
        # Small sensors (N-MNIST is 34x34) are unreadable at 1:1; enlarge by an integer factor.
        zoom = max(1, 256 // max(height, width))
        pil = [Image.fromarray(im).resize((width * zoom, height * zoom), Image.NEAREST) for im in images]
        duration_ms = max(20, int(round(time_window_us / 1000)))
        pil[0].save(out, save_all=True, append_images=pil[1:], duration=duration_ms, loop=0)
    elif suffix == ".png":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = images[:PNG_GRID_LIMIT]
        cols = min(4, len(shown))
        rows = (len(shown) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
        for index, ax in enumerate(axes.flat):
            ax.axis("off")
            if index < len(shown):
                ax.imshow(shown[index], interpolation="nearest")
                t0 = index * time_window_us / 1000
                ax.set_title(f"{t0:.0f}-{t0 + time_window_us / 1000:.0f} ms", fontsize=9)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
    else:
        raise ConfigError(f"{out}: output must end in .png or .gif, not {suffix or 'no suffix'!r}")
    return out


def render_recording(source, out, time_window_us: float, max_frames: int | None = None,
                     sensor_size=None) -> tuple[np.ndarray, Path]:
    """Bin the start of a recording into frames of ``time_window_us`` and render them to ``out``
    (PNG grid or GIF); returns (the frames drawn, the path written)."""
    from .binning import to_frame
    from .io import open_recording

    if time_window_us <= 0:
        raise ConfigError(f"time window must be > 0 microseconds, got {time_window_us}")
    with open_recording(source, sensor_size=sensor_size) as recording:
        sensor_size = recording.sensor_size
        limit = max_frames or (GIF_FRAME_LIMIT if str(out).lower().endswith(".gif") else PNG_GRID_LIMIT)
        # Read only as much of the recording as the frames to be drawn need.
        chunks, start = [], None
        for chunk in recording.chunks(time_window=time_window_us):
            if len(chunk) and start is None:
                start = int(chunk["t"][0])
            chunks.append(chunk)
            if len(chunks) >= limit:
                break
        events = np.concatenate(chunks) if chunks else np.zeros(0)
    if sensor_size is None:
        sensor_size = _infer_geometry(source, events)
    frames = to_frame(events, sensor_size, time_window=time_window_us, include_incomplete=True)[:limit]
    written = render_frames(frames, out, time_window_us,
                            title=f"{Path(source).name} ({recording.format}, {sensor_size[0]}x{sensor_size[1]})")
    return frames[:GIF_FRAME_LIMIT], written


def show_frames(frames: np.ndarray, time_window_us: float) -> None:
    """Play the frames in a window at the recording's pace; a headless machine gets a note, not a crash."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and os.name != "nt":
        print("no display found (DISPLAY is not set): wrote the file only")
        return
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    image = ax.imshow(frame_to_rgb(frames[0]), interpolation="nearest")
    ax.axis("off")
    for index, frame in enumerate(frames):
        if not plt.fignum_exists(fig.number):
            break
        image.set_data(frame_to_rgb(frame))
        ax.set_title(f"frame {index}: {index * time_window_us / 1000:.0f} ms")
        plt.pause(max(time_window_us / 1e6, 0.02))
    plt.show()


def _infer_geometry(source, events: np.ndarray):
    """Headerless files (ATIS .bin): the smallest well-known sensor that holds every event, said aloud."""
    from .io.info import infer_sensor_size

    if len(events) == 0:
        raise ConfigError(f"{source}: no events and no sensor size; pass --sensor-size WIDTHxHEIGHT")
    size, name = infer_sensor_size(int(events["x"].max()), int(events["y"].max()))
    if size is None:
        raise ConfigError(f"{source}: the file does not give its sensor size; pass --sensor-size WIDTHxHEIGHT")
    print(f"{source}: no sensor size in the file; assuming {size[0]}x{size[1]} ({name}); "
          f"pass --sensor-size to override")
    return size
