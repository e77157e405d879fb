"""fishzoo.images: reading images with bounded memory."""
import subprocess
import sys

import timm

from fishzoo.hub import save_pretrained


def _strip_image(path):
    """1 x 20,000,000 px, 19.5 KB: under the 89.5 Mpx bomb limit, but 1.28 Gpx once resized to 64 px high."""
    from PIL import Image
    Image.new('L', (20_000_000, 1), 128).save(path)
    return path


def test_memory_is_bounded_by_what_the_resize_computes(tmp_path):
    """predict, export calibration and the demo page read a strip image with bounded memory (they tried to
    allocate ~20 GB: MemoryError)."""
    from PIL import Image

    from fishzoo.images import MAX_IMAGE_PIXELS, LimitResize
    wide = Image.new('RGB', (40_000, 10))
    cropped = LimitResize(256)(wide)
    assert cropped.size[1] == 10 and 256 ** 2 * cropped.size[0] / 10 <= MAX_IMAGE_PIXELS < 256 ** 2 * 4000
    photo = Image.new('RGB', (4000, 3000))
    assert LimitResize(256)(photo) is photo  # ordinary shapes untouched

    strip = _strip_image(tmp_path / 'strip.png')
    folder = save_pretrained(timm.create_model('fishnet_s64', num_classes=3, in_chans=1), tmp_path / 'gray',
                             label_names=['a', 'b', 'c'])
    code = f'''
import sys
from fishzoo.cli import main
from fishzoo.deploy.calibration import calibration_images
from fishzoo.space_app import FolderClassifier
from PIL import Image
assert main(['predict', {str(folder)!r}, {str(strip)!r}]) == 0
import fishzoo
model = fishzoo.load_model({str(folder)!r})
images = calibration_images({str(tmp_path)!r}, model.pretrained_cfg)
assert images.dataset[0][0].shape == (1, 64, 64)
Image.MAX_IMAGE_PIXELS = None  # the demo receives images Gradio decoded already
assert FolderClassifier({str(folder)!r})(Image.open({str(strip)!r}))
# this process's own high-water mark (ru_maxrss would carry pytest's over the fork and exec)
peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')).split()[1]
print('peak MB', int(peak) // 1024)
'''
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) < 3000, proc.stdout  # MB, interpreter and torch included
