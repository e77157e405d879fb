"""Reading images the way every fishzoo path does: any mode converted, EXIF applied, unreadable files named.

Training data (``fishzoo.data``), ``fishzoo predict`` and calibration sets all decode through
:func:`load_image`, and check files up front with :func:`drop_unreadable`.
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data.readers.img_extensions import get_img_extensions

from fishzoo.errors import DataError, first_line

IMAGE_EXTENSIONS = tuple(sorted(get_img_extensions()))


def image_mode(in_chans: int) -> str:
    """The PIL mode a model with ``in_chans`` input channels reads."""
    modes = {1: 'L', 3: 'RGB', 4: 'RGBA'}
    if in_chans not in modes:
        raise DataError(f'--in-chans must be 1, 3 or 4 for image data, got {in_chans}')
    return modes[in_chans]


def load_image(source: Union[str, Path, Image.Image], mode: str = 'RGB') -> Image.Image:
    """Open an image as ``mode`` ('L', 'RGB' or 'RGBA'), whatever it is stored as.

    EXIF orientation is applied; 16- and 32-bit integer and float images are scaled to 8 bits;
    palette images keep their transparency; transparent pixels are composed onto white for 'L'/'RGB'.
    """
    img = source if isinstance(source, Image.Image) else Image.open(source)
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
    try:
        with Image.open(path) as img:
            img.load()
        return None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return first_line(e)


def drop_unreadable(samples: List[Tuple[str, object]], strict: bool, workers: int = 4):
    """Decode every file once; unreadable ones are dropped and reported (or fatal when ``strict``)."""
    paths = [p for p, _ in samples]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        errors = list(pool.map(_decode_error, paths))
    bad = [(p, e) for p, e in zip(paths, errors) if e is not None]
    if bad and strict:
        path, reason = bad[0]
        raise DataError(f'{path}: unreadable image ({reason}); --strict-images stops at the first one')
    kept = [s for s, e in zip(samples, errors) if e is None]
    return kept, bad
