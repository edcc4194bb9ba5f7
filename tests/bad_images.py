"""The bad-file set of issue #12, generated with PIL and zlib (tests and benchmarks).

Each generator returns encoded bytes. The bombs are small files that decode
into gigabytes: they are written without ever holding their pixels.
"""
import io
import struct
import zlib

import numpy as np
from PIL import Image

# EXIF orientation 6: the camera was turned 90 degrees clockwise; viewers rotate it back.
ROTATED_CW = 6


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def photo(size=(48, 32), mode="RGB", seed=0) -> Image.Image:
    """A picture whose orientation shows: bright left third, dark rest, plus noise."""
    w, h = size
    arr = np.random.RandomState(seed).randint(0, 40, (h, w, 3)).astype(np.uint8)
    arr[:, : w // 3] += 200
    return Image.fromarray(arr, "RGB").convert(mode)


def png_bomb(width=20000, height=20000) -> bytes:
    """A greyscale PNG of width x height zeros: 400 M pixels in ~400 KB."""
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def gif_bomb(frames=400, size=2000) -> bytes:
    """An animated GIF of `frames` frames of size x size: one PIL-encoded frame repeated."""
    one = encode(Image.new("P", (size, size), 0), "GIF")
    flags = one[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    pos = start
    while one[pos] != 0x2C:  # skip extensions up to the image descriptor
        pos = _after_sub_blocks(one, pos + 2)
    begin = pos
    fflags = one[pos + 9]
    pos += 10 + (3 << ((fflags & 7) + 1) if fflags & 0x80 else 0) + 1
    frame = one[begin:_after_sub_blocks(one, pos)]
    return one[:start] + frame * frames + b";"


def _after_sub_blocks(data, pos):
    while data[pos]:
        pos += 1 + data[pos]
    return pos + 1


def with_exif_orientation(image: Image.Image, orientation: int = ROTATED_CW) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def bad_file_set(bombs=True):
    """{file name: (bytes, expected)}: expected is "ok", "skip" or "skip-budget"."""
    jpeg = encode(photo((64, 64)), "JPEG")
    files = {
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "skip"),
        "empty.jpg": (b"", "skip"),
        "text.png": (b"this is not an image, it is a text file\n" * 4, "skip"),
        "rgba.png": (encode(photo(mode="RGBA"), "PNG"), "ok"),
        "gray.png": (encode(photo(mode="L"), "PNG"), "ok"),
        "cmyk.jpg": (encode(photo(mode="CMYK"), "JPEG"), "ok"),
        "sixteen_bit.png": (encode(Image.fromarray(
            (np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40), "I;16"), "PNG"), "ok"),
        "bitmap.bmp": (encode(photo(), "BMP"), "ok"),
        "still.gif": (encode(photo().convert("P"), "GIF"), "ok"),
        "one_pixel.png": (encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "ok"),
        "exif_rotated.jpg": (with_exif_orientation(photo()), "ok"),
        "фото_ünïcode.jpg": (jpeg, "ok"),
    }
    if bombs:
        files["bomb.png"] = (png_bomb(), "skip-budget")
        files["bomb.gif"] = (gif_bomb(), "skip-budget")
    return files
