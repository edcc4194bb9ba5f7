"""One image budget for the pipeline and the server, checked on the header alone.

A 388 KB PNG can declare 20000x20000 pixels and a 1.6 MB GIF 400 frames of
2000x2000: decoding them is what costs gigabytes, so the size has to be read
before any decoder runs. This module parses the headers of the formats
tf.io.decode_image reads (JPEG, PNG, GIF, BMP) in plain Python -- no TensorFlow,
no PIL -- so ImageExampleGen and the gRPC server apply the same rule at the
same cost (microseconds per image).

It also reads the EXIF orientation of JPEGs: TensorFlow's decoders ignore it,
so `upright` rotates such images once, with the same code on both sides, and
training and serving see the same upright pixels for the same file.
"""
from __future__ import annotations

import dataclasses
import io
import struct
from typing import Optional

# The server's historical --max-image-pixels default; 16.7 M pixels is a 48 MB RGB array.
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_FRAMES = 256
DEFAULT_MAX_DECODED_BYTES = 256 << 20


class NotAnImage(ValueError):
    """The bytes are not a JPEG, PNG, GIF or BMP whose header can be read."""


class OverBudget(ValueError):
    """The image would decode into more pixels, frames or bytes than allowed."""


@dataclasses.dataclass(frozen=True)
class ImageBudget:
    max_pixels: int = DEFAULT_MAX_PIXELS  # per frame (width x height, of canvas and of frames)
    max_frames: int = DEFAULT_MAX_FRAMES
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES  # all frames, as the decoder holds them

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "ImageBudget":
        return cls(**{k: int(v) for k, v in (values or {}).items() if v is not None})


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    format: str  # JPEG, PNG, GIF, BMP
    width: int
    height: int
    frames: int = 1
    channels: int = 3
    bytes_per_sample: int = 1
    largest_frame_pixels: int = 0  # GIF frames may declare more than the canvas
    orientation: int = 1  # EXIF orientation (JPEG); 1 is upright

    @property
    def decoded_bytes(self) -> int:
        # The decoders hold every frame at the file's depth, and at least RGB
        # after the channels=3 conversion.
        return (self.frames * self.width * self.height * max(3, self.channels)
                * self.bytes_per_sample)


def read_header(data: bytes) -> ImageHeader:
    """The header of encoded image bytes; NotAnImage says what is wrong."""
    data = bytes(data)
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
        if data.startswith((b"GIF87a", b"GIF89a")):
            return _gif(data)
        if data.startswith(b"BM"):
            return _bmp(data)
    except (struct.error, IndexError):
        raise NotAnImage(f"truncated {kind(data)} header ({len(data)} bytes)") from None
    raise NotAnImage(f"not a JPEG, PNG, GIF or BMP image ({len(data)} bytes, "
                     f"starting {data[:8]!r})")


def check(data: bytes, budget: ImageBudget = ImageBudget()) -> ImageHeader:
    """read_header, then OverBudget naming the limit an image exceeds."""
    h = read_header(data)
    if h.width <= 0 or h.height <= 0:
        raise NotAnImage(f"{h.format} declares no pixels ({h.width}x{h.height})")
    pixels = max(h.width * h.height, h.largest_frame_pixels)
    if pixels > budget.max_pixels:
        raise OverBudget(f"{h.format} of {h.width}x{h.height} pixels is over the budget of "
                         f"{budget.max_pixels} pixels")
    if h.frames > budget.max_frames:
        raise OverBudget(f"{h.format} of {h.frames} frames is over the budget of "
                         f"{budget.max_frames} frames")
    if h.decoded_bytes > budget.max_decoded_bytes:
        raise OverBudget(f"{h.format} of {h.frames} frame(s) of {h.width}x{h.height} decodes to "
                         f"{h.decoded_bytes >> 20} MiB, over the budget of "
                         f"{budget.max_decoded_bytes >> 20} MiB")
    return h


def upright(data: bytes, header: Optional[ImageHeader] = None) -> bytes:
    """Bytes whose pixels are upright: EXIF-rotated JPEGs are rotated and re-encoded.

    Upright images come back unchanged (the same object). The re-encoding is
    deterministic (PIL, JPEG quality 95, no chroma subsampling), so the
    pipeline and the server produce the same bytes from the same file.
    """
    header = header or read_header(data)
    if header.orientation in (0, 1):
        return data
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            rotated = ImageOps.exif_transpose(im)
            out = io.BytesIO()
            rotated.convert("RGB").save(out, format="JPEG", quality=95, subsampling=0)
    except Exception as e:  # noqa: BLE001 -- PIL raises OSError, SyntaxError, ... on bad data
        raise NotAnImage(f"cannot apply the EXIF orientation: {e}") from None
    return out.getvalue()


# ----------------------------------------------------------------------------
def kind(data: bytes) -> str:
    """The format its first bytes name (JPEG, PNG, GIF, BMP), else "image"."""
    return {b"\x89P": "PNG", b"\xff\xd8": "JPEG", b"GI": "GIF", b"BM": "BMP"}.get(data[:2], "image")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def _png(data: bytes) -> ImageHeader:
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length < 13:
        raise NotAnImage("PNG without an IHDR chunk")
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    if color not in _PNG_CHANNELS:
        raise NotAnImage(f"PNG with unknown colour type {color}")
    # tf.io.decode_png decodes the first frame of an animated PNG only.
    return ImageHeader("PNG", width, height, channels=_PNG_CHANNELS[color],
                       bytes_per_sample=2 if depth == 16 else 1)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> ImageHeader:
    pos, orientation = 2, 1
    while True:
        # Markers may be padded with any number of 0xFF bytes.
        while data[pos] == 0xFF and data[pos + 1] == 0xFF:
            pos += 1
        if data[pos] != 0xFF:
            raise NotAnImage(f"JPEG with a broken marker at byte {pos}")
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            raise NotAnImage("JPEG without a frame header (SOF) before its scan")
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        segment = data[pos + 4:pos + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
            orientation = _exif_orientation(segment[6:]) or orientation
        if marker in _SOF:
            depth, height, width, channels = struct.unpack(">BHHB", segment[:6])
            return ImageHeader("JPEG", width, height, channels=channels,
                               bytes_per_sample=2 if depth > 8 else 1, orientation=orientation)
        pos += 2 + length


def _exif_orientation(tiff: bytes) -> Optional[int]:
    """Tag 0x0112 of IFD0 of an EXIF (TIFF) block; None when absent or malformed."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
        for i in range(count):
            entry = tiff[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
            tag, _, _, value = struct.unpack(order + "HHIH", entry[:10])
            if tag == 0x0112:
                return value if 1 <= value <= 8 else None
    except (KeyError, struct.error):
        return None
    return None


def _gif(data: bytes) -> ImageHeader:
    width, height, flags = struct.unpack("<HHB", data[6:11])
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames, largest = 0, 0
    # Walk the blocks: every image descriptor is a frame tf.io.decode_gif
    # decodes onto a full canvas, even with expand_animations=False.
    while pos < len(data):
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x2C:  # image descriptor
            fw, fh, fflags = struct.unpack("<HHB", data[pos + 5:pos + 10])
            frames += 1
            largest = max(largest, fw * fh)
            pos += 10 + (3 << ((fflags & 7) + 1) if fflags & 0x80 else 0) + 1  # + LZW code size
        elif block == 0x21:  # extension: label, then sub-blocks
            pos += 2
        else:  # giflib stops at an unknown block too
            break
        pos = _skip_sub_blocks(data, pos)
    return ImageHeader("GIF", width, height, frames=max(frames, 1), channels=3,
                       largest_frame_pixels=largest)


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data):
        size = data[pos]
        pos += 1 + size
        if size == 0:
            break
    return pos


def _bmp(data: bytes) -> ImageHeader:
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:
        width, height, _, bpp = struct.unpack("<HHHH", data[18:26])
    else:
        width, height, _, bpp = struct.unpack("<iiHH", data[18:30])
    return ImageHeader("BMP", abs(width), abs(height), channels=max(1, bpp // 8))

