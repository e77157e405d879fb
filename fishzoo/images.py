"""Reading images the way every fishzoo path does: any mode converted, EXIF applied, unreadable files named.

Training data (``fishzoo.data``), ``fishzoo predict`` and calibration sets all decode through
:func:`load_image`, and check files up front with :func:`drop_unreadable`. An image whose header
announces more than :data:`MAX_IMAGE_PIXELS` pixels (a few KB on disk can decompress to gigabytes) is
refused before it is decoded; every refusal is a :class:`~fishzoo.errors.DataError` naming the file.
"""
import io
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data.readers.img_extensions import get_img_extensions

from fishzoo.errors import DataError, describe

# timm's (.jpeg, .jpg, .png) and the other formats users bring that PIL reads: a class folder or a predict
# folder of WebP or BMP files must not be silently left out
IMAGE_EXTENSIONS = tuple(sorted(set(get_img_extensions()) | {'.bmp', '.gif', '.tif', '.tiff', '.webp'}))
# PIL warns above this many pixels and refuses above twice as many; fishzoo refuses above it (89.5 Mpx,
# e.g. 9459x9459): no image a classifier is trained on or asked about comes close
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# what PIL raises for a file it cannot read: damaged, truncated, unsupported, or a bomb
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


def refuse_bombs_quietly() -> None:
    """For fishzoo's command-line tools: PIL's DecompressionBombWarning is dropped, because fishzoo refuses
    those images itself with one sentence (a library user keeps PIL's warning)."""
    warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)


def _name(source: Any) -> str:
    if isinstance(source, dict):  # a Hugging Face datasets image that was not decoded
        return source.get('path') or 'an image of the dataset'
    return str(source)


def open_image(source: Union[str, Path, dict]) -> Image.Image:
    """Open (not yet decode) an image file, refusing one whose size makes it a decompression bomb."""
    name = _name(source)
    try:
        if isinstance(source, dict):
            img = Image.open(io.BytesIO(source['bytes'])) if source.get('bytes') else Image.open(source['path'])
        else:
            img = Image.open(source)
    except Image.DecompressionBombError as e:
        raise DataError(f'{name}: refused as a decompression bomb ({describe(e)})') from None
    except DECODE_ERRORS as e:
        raise DataError(f'{name}: unreadable image ({describe(e)})') from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise DataError(f'{name}: refused as a decompression bomb ({width}x{height} pixels, more than the '
                        f'{MAX_IMAGE_PIXELS:,} fishzoo decodes)')
    return img


def image_mode(in_chans: int) -> str:
    """The PIL mode a model with ``in_chans`` input channels reads."""
    modes = {1: 'L', 3: 'RGB', 4: 'RGBA'}
    if in_chans not in modes:
        raise DataError(f'--in-chans must be 1, 3 or 4 for image data, got {in_chans}')
    return modes[in_chans]


def load_image(source: Union[str, Path, dict, Image.Image], mode: str = 'RGB') -> Image.Image:
    """Open an image as ``mode`` ('L', 'RGB' or 'RGBA'), whatever it is stored as.

    EXIF orientation is applied; 16- and 32-bit integer and float images are scaled to 8 bits;
    palette images keep their transparency; transparent pixels are composed onto white for 'L'/'RGB'.
    """
    if isinstance(source, Image.Image):
        return _convert(source, mode)
    img = open_image(source)
    try:
        return _convert(img, mode)
    except DECODE_ERRORS as e:
        raise DataError(f'{_name(source)}: unreadable image ({describe(e)})') from None


def _convert(img: Image.Image, mode: str) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
        array = np.asarray(img, dtype=np.float64)
        high = 65535.0 if img.mode.startswith('I;16') or array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8), mode='L')
    if img.mode == 'P':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
    if img.mode in ('LA', 'PA', 'RGBa', 'La'):
        img = img.convert('RGBA')
    if mode != 'RGBA' and img.mode == 'RGBA':
        background = Image.new('RGBA', img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert(mode)


def _decode_error(path) -> Optional[str]:
    """Why ``path`` cannot be used (the reason part of the sentence), or None."""
    try:
        with open_image(path) as img:
            img.load()
        return None
    except DataError as e:
        return str(e)[len(f'{path}: '):]
    except DECODE_ERRORS as e:
        return f'unreadable image ({describe(e)})'


def drop_unreadable(samples: List[Tuple[str, object]], strict: bool, workers: int = 4):
    """Decode every file once; unreadable ones are dropped and reported (or fatal when ``strict``)."""
    paths = [p for p, _ in samples]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        errors = list(pool.map(_decode_error, paths))
    bad = [(p, e) for p, e in zip(paths, errors) if e is not None]
    if bad and strict:
        path, reason = bad[0]
        raise DataError(f'{path}: {reason}; --strict-images stops at the first one')
    kept = [s for s, e in zip(samples, errors) if e is None]
    return kept, bad


class LimitResize:
    """A transform placed before timm's eval transform: an image whose short side, resized to ``short_side``,
    would make the resized image larger than :data:`MAX_IMAGE_PIXELS` first has its long side center-cropped
    to what keeps it under that.

    The bomb check counts the pixels an image has; this bounds the pixels its resize computes (a 1 x 20,000,000
    px strip of 20 KB becomes 64 x 1,280,000,000 px at 64 px). The center crop that follows the resize uses only
    the middle of the long side, so the result is the same picture; images of ordinary shapes pass untouched.
    """

    def __init__(self, short_side: int):
        self.short_side = max(1, int(short_side))

    def __call__(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        short, long = min(width, height), max(width, height)
        if short == 0 or self.short_side ** 2 * long / short <= MAX_IMAGE_PIXELS:
            return img
        keep = max(short, int(MAX_IMAGE_PIXELS * short / self.short_side ** 2))
        start = (long - keep) // 2
        box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
        return img.crop(box)


def image_files(root: Union[str, Path]) -> List[Path]:
    """The image files under ``root``, sorted: regular files with an image extension only (a FIFO named
    ``x.png`` would block the reader forever), reached without leaving ``root`` and visiting no folder twice
    (symbolic links may point into the tree, e.g. a class folder shared by two splits; a link to ``..`` or out
    of the tree is not followed, so two ``l -> ..`` links cannot make the walk exponential)."""
    root = Path(root)
    top = os.path.realpath(root)
    inside = top.rstrip(os.sep) + os.sep
    seen, found, stack = set(), [], [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen or not (real == top or real.startswith(inside)):
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    target = os.path.realpath(entry.path)
                    if target.startswith(inside) and stat.S_ISREG(os.stat(target).st_mode):
                        found.append(Path(entry.path))
            except OSError:  # a dangling link, a file removed meanwhile
                continue
    return sorted(found)

