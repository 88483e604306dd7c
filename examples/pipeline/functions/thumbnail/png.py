"""A small PNG codec in pure Python (zlib and struct from the standard library, no native
packages): decodes 8-bit, non-interlaced grayscale, RGB, grayscale+alpha and RGBA images, scales
them down, and encodes RGB or RGBA. Enough for thumbnails; anything else raises ValueError with
what is unsupported."""

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # color type -> samples per pixel


def _chunks(data):
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG file (the signature is missing)")
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 12 + length


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw, width, height, bpp):
    stride = width * bpp
    rows, prev, pos = [], bytearray(stride), 0
    for _ in range(height):
        kind, line = raw[pos], bytearray(raw[pos + 1:pos + 1 + stride])
        pos += 1 + stride
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, upleft = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                line[i] = (line[i] + _paeth(left, up, upleft)) & 0xFF
            elif kind != 0:
                raise ValueError(f"unknown PNG filter type {kind}")
        rows.append(line)
        prev = line
    return rows


def decode(data):
    """(width, height, channels, rows): one bytearray per row."""
    header, idat = None, []
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    if header is None:
        raise ValueError("the PNG has no IHDR chunk")
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or color not in CHANNELS or interlace:
        raise ValueError(f"unsupported PNG: bit depth {depth}, color type {color}, interlace {interlace}")
    channels = CHANNELS[color]
    return width, height, channels, _unfilter(zlib.decompress(b"".join(idat)), width, height, channels)


def thumbnail(width, height, channels, rows, size):
    """Scale so the longer side is at most `size` (nearest pixel); returns (w, h, rows)."""
    scale = max(width, height) / size if max(width, height) > size else 1
    w, h = max(1, round(width / scale)), max(1, round(height / scale))
    out = []
    for y in range(h):
        src = rows[min(height - 1, int(y * scale))]
        line = bytearray()
        for x in range(w):
            i = min(width - 1, int(x * scale)) * channels
            line += src[i:i + channels]
        out.append(line)
    return w, h, out


def encode(width, height, channels, rows):
    color = {v: k for k, v in CHANNELS.items()}[channels]

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
