"""Small real image files for data and training tests: learnable classes, every awkward format."""
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = ('rgb.jpg', 'gray.png', 'rgba.png', 'palette.png', 'gray16.png')


def class_image(cls: int, index: int, size: int = 40) -> np.ndarray:
    """An RGB picture whose class is visible: a bright bar whose orientation and color depend on cls."""
    rng = np.random.default_rng(1000 * cls + index)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    offset = 8 + (index % 3) * 4
    if cls % 3 == 0:
        img[offset:offset + 8, :, cls % 3] = 230
    elif cls % 3 == 1:
        img[:, offset:offset + 8, cls % 3] = 230
    else:
        np.fill_diagonal(img[:, :, 2], 230)
        img[np.arange(size), np.clip(np.arange(size) + 1, 0, size - 1), 2] = 230
    return img


def save_as(array: np.ndarray, path: Path, fmt: str) -> Path:
    path = path.with_name(f'{path.stem}_{fmt}')
    img = Image.fromarray(array)
    if fmt == 'rgb.jpg':
        img.save(path, quality=95)
    elif fmt == 'gray.png':
        img.convert('L').save(path)
    elif fmt == 'rgba.png':
        rgba = img.convert('RGBA')
        rgba.putalpha(200)
        rgba.save(path)
    elif fmt == 'palette.png':
        img.convert('P', palette=Image.ADAPTIVE, colors=32).save(path)
    elif fmt == 'gray16.png':
        Image.fromarray(array.mean(2).astype(np.uint16) * 257).save(path)
    return path


def make_image_folder(root: Path, classes=('cat', 'dog', 'fish'), per_class: int = 8, size: int = 40) -> Path:
    """root/CLASS/IMAGE files cycling through every format."""
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            save_as(class_image(c, i, size), folder / f'{i:03d}', FORMATS[i % len(FORMATS)])
    return root


def make_train_val(root: Path, classes=('cat', 'dog', 'fish'), train: int = 8, val: int = 4) -> Path:
    make_image_folder(root / 'train', classes, train)
    for c, name in enumerate(classes):  # different pictures for val
        folder = root / 'val' / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(val):
            save_as(class_image(c, 100 + i), folder / f'v{i:03d}', FORMATS[i % len(FORMATS)])
    return root


def make_multilabel_csv(root: Path, rows: int = 24):
    """image,labels CSV over 3 labels (some rows with none) with the images in root/images."""
    images = root / 'images'
    images.mkdir(parents=True, exist_ok=True)
    lines = ['image,labels']
    for i in range(rows):
        labels = [name for bit, name in enumerate(('red', 'green', 'blue')) if (i >> bit) & 1]
        array = np.full((32, 32, 3), 20, np.uint8)
        for name in labels:
            array[:, :, ('red', 'green', 'blue').index(name)] = 220
        Image.fromarray(array).save(images / f'{i:03d}.png')
        lines.append(f'images/{i:03d}.png,{" ".join(labels)}')
    (root / 'labels.csv').write_text('\n'.join(lines) + '\n')
    return root / 'labels.csv'


def make_parquet_dataset(root: Path) -> Path:
    """A Hugging Face dataset as the Hub serves one: parquet data files, 38 train rows in three, 9 validation rows
    in one; random 24x20 RGB images, labels ant/bee/cow by row."""
    import datasets
    (root / 'data').mkdir(parents=True)
    rng = np.random.default_rng(0)
    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(names=['ant', 'bee', 'cow'])})
    images = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)) for _ in range(47)]
    ds = datasets.Dataset.from_dict({'image': images, 'label': [i % 3 for i in range(47)]}, features=features)
    for i, (start, stop) in enumerate(((0, 15), (15, 31), (31, 38))):
        ds.select(range(start, stop)).to_parquet(str(root / 'data' / f'train-{i:05d}-of-00003.parquet'))
    ds.select(range(38, 47)).to_parquet(str(root / 'data' / 'validation-00000-of-00001.parquet'))
    return root


def write_png_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A valid 1-bit PNG of ``width`` x ``height`` blank pixels: about 100 KB on disk at 30000x30000,
    900 Mpx (2.7 GB as RGB) once decoded. Written row by row, so making it allocates nothing large."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b'\x00' * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    compressor, parts = zlib.compressobj(9), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', b''.join(parts))
                     + chunk(b'IEND', b''))
    return path
