"""Images in every Pillow mode become the 8-bit RGB a viewer shows; bad image files are one-line errors."""
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from common.images import ImageError, open_rgb, to_rgb, verify_image
from consumer.inputs import load_image

MID = 127.5  # mid-grey on an 8-bit scale; each case below is mid-grey (or a named colour) in its own mode


def _palette(colour, transparent=None):
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, *colour] + [0] * (256 * 3 - 6))
    if transparent is not None:
        im.info["transparency"] = transparent
    return im


MODES = {  # name: (image, expected RGB of every pixel)
    "I;16": (Image.new("I;16", (4, 4), 32768), MID),
    "I;16L": (Image.new("I;16L", (4, 4), 32768), MID),
    "I;16B": (Image.frombytes("I;16B", (4, 4), struct.pack(">H", 32768) * 16), MID),
    "I;16N": (Image.new("I;16N", (4, 4), 32768), MID),
    "I": (Image.new("I", (4, 4), 32768), MID),
    "I 16-bit white": (Image.new("I", (4, 4), 65535), 255),
    "F": (Image.new("F", (4, 4), 0.5), MID),
    "F out of range": (Image.new("F", (4, 4), 7.0), 255),
    "1": (Image.new("1", (4, 4), 1), 255),
    "L": (Image.new("L", (4, 4), 128), 128),
    "P": (_palette((128, 128, 128)), 128),
    "P transparent": (_palette((0, 0, 0), transparent=1), 255),
    "PA clear": (Image.new("PA", (4, 4), (0, 0)), 255),
    "LA clear": (Image.new("LA", (4, 4), (0, 0)), 255),
    "LA half": (Image.new("LA", (4, 4), (0, 128)), MID),
    "La clear": (Image.new("La", (4, 4), (0, 0)), 255),
    "RGBA clear": (Image.new("RGBA", (4, 4), (0, 0, 0, 0)), 255),
    "RGBA half": (Image.new("RGBA", (4, 4), (0, 0, 0, 128)), MID),
    "RGBA opaque": (Image.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
    "RGBa clear": (Image.new("RGBa", (4, 4), (0, 0, 0, 0)), 255),
    "RGB": (Image.new("RGB", (4, 4), (10, 20, 30)), (10, 20, 30)),
    "RGBX": (Image.new("RGBX", (4, 4), (10, 20, 30, 0)), (10, 20, 30)),
    "CMYK": (Image.new("CMYK", (4, 4), (0, 0, 0, 128)), MID),
    "YCbCr": (Image.new("YCbCr", (4, 4), (128, 128, 128)), 128),
    "HSV": (Image.new("HSV", (4, 4), (0, 0, 128)), 128),
    "HSV red": (Image.new("HSV", (4, 4), (0, 255, 255)), (255, 0, 0)),
    "LAB": (Image.new("LAB", (4, 4), (128, 128, 128)), 119),  # L* 50 is sRGB 119
}


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_becomes_the_rgb_a_viewer_shows(name):
    image, expected = MODES[name]
    rgb = to_rgb(image)
    pixels = np.asarray(rgb).astype(np.float64)
    assert rgb.mode == "RGB" and rgb.size == image.size
    assert np.abs(pixels - np.broadcast_to(expected, pixels.shape)).max() <= 1, (name, pixels[0, 0])


def test_a_16bit_grey_png_stays_mid_grey(tmp_path):
    """The bug: Image.convert('RGB') clips 16-bit values, so mid-grey read as 253.8 on average."""
    Image.fromarray(np.full((32, 48), 32768, np.uint16)).save(tmp_path / "grey16.png")
    ramp = np.linspace(0, 65535, 256 * 16).round().astype(np.uint16).reshape(16, 256)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "grey16.png") as im:
        assert im.mode == "I;16"
    assert abs(np.asarray(open_rgb(tmp_path / "grey16.png")).mean() - MID) <= 1
    levels = np.asarray(open_rgb(tmp_path / "ramp16.png"))[..., 0].ravel()
    assert levels[0] == 0 and levels[-1] == 255 and np.all(np.diff(levels.astype(int)) >= 0)
    assert np.abs(levels - ramp.ravel() / 257).max() <= 0.5 + 1e-9
    assert abs(load_image(tmp_path / "grey16.png", (16, 16)).mean() - MID) <= 1


def test_transparency_is_composited_on_white(tmp_path):
    """Transparent pixels often hold black: dropping alpha would show a black background no viewer shows."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (200, 10, 10, 255)  # opaque red left half, fully transparent black right half
    Image.fromarray(rgba).save(tmp_path / "cutout.png")
    pixels = np.asarray(open_rgb(tmp_path / "cutout.png"))
    assert np.all(pixels[:, :4] == (200, 10, 10)) and np.all(pixels[:, 4:] == 255)
    grey = Image.new("L", (4, 4), 0)
    grey.save(tmp_path / "trns.png", transparency=0)  # a grey PNG whose value 0 is transparent (tRNS)
    assert np.all(np.asarray(open_rgb(tmp_path / "trns.png")) == 255)


def test_exif_orientation_is_honoured(tmp_path):
    """Phones store photos sideways with an EXIF orientation; viewers (and users) see them upright."""
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = (255, 0, 0)  # red left half as stored
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the stored left half is shown on top
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    shown = np.asarray(open_rgb(tmp_path / "phone.jpg")).astype(int)
    assert shown.shape == (60, 40, 3)
    assert shown[:25, :, 0].mean() > 240 and shown[35:, :, 0].mean() < 15
    assert load_image(tmp_path / "phone.jpg", (60, 40)).shape == (60, 40, 3)


def test_load_image_still_centre_crops_and_resizes_rgb(tmp_path):
    """For RGB files the crop/resize is what it was: centre crop to H:W, Lanczos to (H, W)."""
    rgb = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    expected = Image.fromarray(rgb[:, 15:65]).resize((32, 32), Image.LANCZOS)
    assert np.array_equal(load_image(tmp_path / "wide.png", (32, 32)), np.asarray(expected))
    assert np.array_equal(load_image(tmp_path / "wide.png", (50, 80)), rgb)


def _png(width, height, pixels=b"\x00\x00"):
    """A grey PNG whose IHDR claims width x height over a few bytes of pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


def _bad_files(tmp_path):
    """{file: words its one-line error must contain}."""
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "good.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "good.jpg")
    png, jpg = (tmp_path / "good.png").read_bytes(), (tmp_path / "good.jpg").read_bytes()
    idat = png.index(b"IDAT") + 6
    files = {
        "empty.png": (b"", "empty"),
        "notes.png": (b"these are not pixels\n" * 10, "not an image"),
        "cut.png": (png[:len(png) // 2], "cannot read"),
        "cut.jpg": (jpg[:len(jpg) // 2], "cannot read"),
        "flipped.png": (png[:idat] + bytes([png[idat] ^ 0x10]) + png[idat + 1:], "cannot read"),
        "huge.png": (_png(20000, 20000), "too large.*downscale"),  # past Pillow's decompression-bomb limit
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    return {tmp_path / name: words for name, (_, words) in files.items()}


def test_bad_image_files_are_one_line_errors(tmp_path):
    for path, words in {**_bad_files(tmp_path), tmp_path / "missing.png": "not found"}.items():
        for reader in (verify_image, open_rgb, lambda p: load_image(p, (32, 32))):
            with pytest.raises(ImageError, match=words) as e:
                reader(path)
            message = str(e.value)
            assert message.startswith(str(path)) and message.isprintable() and ";" in message, message


def test_max_pixels_is_checked_from_the_header(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"64x64 pixels is too large \(limit 1000 pixels\); downscale"):
        verify_image(tmp_path / "big.png", max_pixels=1000)
    verify_image(tmp_path / "big.png")
    assert open_rgb(tmp_path / "big.png").size == (64, 64)


def test_damaged_images_never_escape_as_other_errors(tmp_path):
    """Seeded truncations and bit flips of a PNG and a JPEG: an RGB image or an ImageError, nothing else."""
    rng = random.Random(0)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    Image.open(tmp_path / "s.png").save(tmp_path / "s.jpg")
    seeds = [(tmp_path / n).read_bytes() for n in ("s.png", "s.jpg")]
    for i in range(60):
        data = bytearray(rng.choice(seeds))
        if i % 2:
            data = data[:rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path = tmp_path / f"case{i}.img"
        path.write_bytes(bytes(data))
        for reader in (verify_image, open_rgb):
            try:
                out = reader(path)
            except ImageError as e:
                assert str(e).startswith(str(path)) and str(e).isprintable()
            else:
                assert out is None or out.mode == "RGB"
