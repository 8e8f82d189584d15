"""Pictures as the apps read them: files, folders and patterns of them, their headers and EXIF orientation, the
pixel cap, resizing; and pixels given as arrays (Ray Data's rows). Preprocessing them into the model's input is
`preprocessing.py`; drawing over them, `drawing.py`.

Needs Pillow, an optional extra: pip install 'fc2conv-onnx[heatmap]'.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError, printable


def pillow(drawing: bool = False):
    """Pillow's Image module, and its ImageDraw when `drawing` (else None: ImageDraw loads FreeType, about 12 ms
    of a detect run that draws nothing)."""
    try:
        from PIL import Image

        if drawing:
            from PIL import ImageDraw
    except ImportError:
        raise InputError("reading and drawing pictures (detect, heatmap, the Detector) needs Pillow: pip install "
                         "'fc2conv-onnx[heatmap]'") from None
    return Image, ImageDraw if drawing else None


def read_image(path: Union[str, "os.PathLike[str]"], load: bool = True,
               expected: Optional[Tuple[int, int]] = None):
    """The image at `path` as a Pillow image, or InputError. `load=False` reads only its header (its size and
    mode; the pixels are decoded when first used).

    Pictures are taken as people see them: an EXIF orientation (a phone's portrait photo is stored sideways) is
    applied, as every viewer does, so boxes are in the pixels of the picture shown. A file of several frames (an
    animated GIF, a multi-page TIFF) is refused: which frame is meant is the user's to say. Pixels beyond
    MAX_PIXELS are refused before they are decoded; `expected` (width, height as shown, from an earlier
    `image_size`) refuses a picture replaced by one of another size since.
    """
    Image, _ = pillow()
    path = Path(path)
    if path.is_dir():
        raise InputError(f"image '{path}' is a folder, not a picture")
    if not path.exists():
        raise InputError(f"image '{path}' does not exist")
    if not path.is_file():
        raise InputError(f"image '{path}' is not a regular file (a device, FIFO or socket); give a picture file")
    try:
        with warnings.catch_warnings():  # Pillow's own size warning: the tool's caps say it in its words
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            frames = getattr(image, "n_frames", 1)
            if load and frames == 1:
                # The cap holds where the pixels are decoded: a 20 KB PNG of 1-bit pixels can be 13000 x 13000.
                width, height = image.size
                check_pixels(width, height, f"'{printable(str(path))}' as stored")
                if expected is not None and _shown_size(image) != tuple(expected):
                    raise InputError(f"image '{printable(str(path))}' changed during the run: it was "
                                   f"{expected[0]}x{expected[1]} when its header was read, and is now "
                                   f"{'x'.join(map(str, _shown_size(image)))}; run again once it is complete")
                image.load()
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"image '{path}' is not a readable picture ({error})") from None
    if frames != 1:
        raise InputError(f"image '{path}' has {frames} frames (an animation or a multi-page file); give one picture, "
                         "the frame you want saved on its own")
    if image.mode.startswith(("I", "F")):  # Pillow would clip them to 8 bits: a wrong picture, not an error
        raise InputError(f"image '{path}' has {image.mode} pixels (16 or 32 bits); give an 8-bit picture (RGB or "
                         "gray), scaled as the model was trained")
    if load and _orientation(image) not in (None, 1):
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)
    return image


#: What a folder is searched for: the files with these extensions (in any case), the formats Pillow reads.
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def picture_files(given: Sequence[Union[str, "os.PathLike[str]"]]) -> List[str]:
    """The picture files `given` names, in order: a file as it is; a folder, the pictures in it (not in its
    subfolders), by name; a pattern (*, ?, [...]) that names no file, the pictures it matches, by name.
    InputError for a folder or pattern that holds no picture."""
    import glob

    found: List[str] = []
    for item in given:
        name = os.fspath(item)
        if os.path.isdir(name):
            try:
                inside = sorted(os.path.join(name, entry) for entry in os.listdir(name))
            except OSError as error:
                raise InputError(f"folder '{printable(name)}' cannot be listed ({error.strerror or error})") from None
            what = f"folder '{printable(name)}'"
        elif not os.path.exists(name) and glob.has_magic(name):
            inside, what = sorted(glob.glob(name)), f"pattern '{printable(name)}'"
        else:
            found.append(name)
            continue
        pictures = [path for path in inside if path.lower().endswith(PICTURE_EXTENSIONS) and os.path.isfile(path)]
        if not pictures:
            raise InputError(f"{what} holds no picture ({', '.join(PICTURE_EXTENSIONS)})")
        found += pictures
    return found


def checked_array(pixels: Any, name: str) -> np.ndarray:
    """A picture given as pixels (uint8, H x W x C with C 1, 3 or 4, or H x W: Ray Data's `image` column), checked
    and taken as it is (no EXIF: an array has none), as H x W or H x W x 3/4; InputError naming `name` otherwise.
    It stays an array: at scale 1 the model's input is made from it without Pillow (`in_mode`)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise InputError(f"picture {name} has {pixels.dtype} pixels; give uint8 pixels (0..255), as read_images "
                         "gives them")
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)) or 0 in pixels.shape:
        raise InputError(f"picture {name} is an array of shape {list(pixels.shape)}; give height x width x "
                         "channels (1, 3 or 4)")
    check_pixels(pixels.shape[1], pixels.shape[0], f"{name} as given")
    return pixels


def size_of(picture: Any) -> Tuple[int, int]:
    """(width, height) of a picture: a Pillow image, or pixels H x W (x C)."""
    return (picture.shape[1], picture.shape[0]) if isinstance(picture, np.ndarray) else picture.size


#: EXIF orientations that turn the stored raster by 90 degrees (its width and height swap when shown).
_QUARTER_TURNS = (5, 6, 7, 8)


def _orientation(image) -> Optional[int]:
    try:
        return image.getexif().get(0x0112)  # the EXIF Orientation tag
    except Exception:  # a damaged EXIF block: the raster as stored
        return None


def _png_orientation(path: Path) -> Optional[int]:
    """The EXIF orientation of a PNG, from its eXIf chunk, found by reading chunk headers only: Pillow's
    getexif() decodes the whole picture to look past the pixels (an eXIf chunk may follow them), which
    doubled what a picture costs `detect`. tests/test_pictures_header.py proves it agrees with Pillow."""
    from PIL import Image

    with open(path, "rb") as stream:
        if stream.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        for _ in range(1 << 16):  # chunks; a damaged file ends the walk, never loops
            header = stream.read(8)
            if len(header) < 8:
                return None
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"eXIf":
                exif = Image.Exif()
                try:
                    exif.load(stream.read(min(length, 1 << 20)))
                    return exif.get(0x0112)
                except Exception:  # a damaged EXIF block: the raster as stored
                    return None
            if kind == b"IEND":
                return None
            stream.seek(length + 4, 1)  # the chunk's data and CRC
    return None


def image_size(path: Union[str, "os.PathLike[str]"]) -> Tuple[int, int]:
    """(width, height) of the picture at `path` as shown (EXIF orientation applied), from its header (for a PNG,
    its chunk headers); InputError if it is not a picture."""
    with read_image(path, load=False) as image:
        return _shown_size(image)


def _shown_size(image) -> Tuple[int, int]:
    """(width, height) of an opened picture as shown, its EXIF orientation applied (read from its header)."""
    width, height = image.size
    turn = _png_orientation(Path(image.filename)) if image.format == "PNG" else _orientation(image)
    return (height, width) if turn in _QUARTER_TURNS else (width, height)


def resized(image, resize: Union[float, Tuple[int, int]]):
    """`image` resized by a factor, or to (height, width) pixels: by area averaging (Pillow's box filter) when
    it shrinks, as image pyramids are made (OpenCV's INTER_AREA, torch's "area"), else bilinear. An image
    that is neither RGB nor gray is made RGB first."""
    Image, _ = pillow()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image))
    width, height = image.size
    if isinstance(resize, (tuple, list)):
        check_pixels(resize[1], resize[0], f"resized to {resize[0]}x{resize[1]}")
        size = (int(resize[1]), int(resize[0]))
    else:
        size = scaled_size(image.size, resize)
    if min(size) < 1:
        raise InputError(f"resizing the {width}x{height} image (width x height) by {resize} leaves no pixel")
    shrinks = size[0] <= width and size[1] <= height
    source = image if image.mode in ("RGB", "L") else image.convert("RGB")
    return source.resize(size, Image.BOX if shrinks else Image.BILINEAR)


def scaled_size(size: Tuple[int, int], scale: float) -> Tuple[int, int]:
    """A picture's (width, height) resized by `scale`, as `resized` makes it; a scale that is not a finite
    positive number, or that makes more than MAX_PIXELS pixels, is refused (exit 3, naming the cap)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise InputError(f"scale {scale} is not a positive number")
    width, height = size[0] * float(scale), size[1] * float(scale)
    check_pixels(width, height, f"scaled by {scale:g}")
    return round(width), round(height)


#: The most pixels a picture may have once scaled or resized: the model's input for it is float32, so 2^26
#: pixels of 3 channels are 768 MiB, within the 1 GiB a model's input may take (io.MAX_INPUT_BYTES).
MAX_PIXELS = 1 << 26


def check_pixels(width: float, height: float, how: str) -> None:
    if width * height > MAX_PIXELS:
        raise InputError(f"the picture {how} would have {width * height:.3g} pixels, more than the {MAX_PIXELS} "
                         "(8192 x 8192) this tool runs a model on")


def in_mode(image: Any, mode: str) -> Any:
    """`image` in Pillow mode `mode` ("RGB" or "L"; itself, not a copy, when it already is). Pixels given as an
    array are converted in numpy exactly as Pillow converts them (tests/test_pictures_header.py): RGBA drops its
    alpha, gray is repeated into RGB, and RGB becomes gray by ITU-R 601-2 luma in Pillow's fixed point."""
    if not isinstance(image, np.ndarray):
        return image if image.mode == mode else image.convert(mode)
    if mode == "RGB":
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    if image.ndim == 2:
        return image
    rgb = image[..., :3].astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def transposed(picture: Any) -> Any:
    """`picture` with rows and columns swapped (a model ported from Caffe or Matlab reads pictures as W x H)."""
    if isinstance(picture, np.ndarray):
        return np.ascontiguousarray(picture.swapaxes(0, 1))
    Image, _ = pillow()
    return picture.transpose(Image.Transpose.TRANSPOSE)
