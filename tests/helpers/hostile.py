"""What the hostile-input tests share: a pickle that runs code, damaged files, class trees with odd entries,
and the one-line check every refusal must pass."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def evil_checkpoint(path, marker, state=None):
    """A checkpoint whose unpickling would create ``marker``."""
    torch.save({'state_dict': state or {'x': torch.zeros(1)}, 'payload': Payload(marker)}, path)
    return path


def one_line(capsys, needle):
    """The command's stderr is one line holding ``needle``; returns it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    return err[0]


def edit_config(folder, **changes):
    """``folder/config.json`` with top-level keys replaced (``model_args`` merged)."""
    config = json.loads((folder / 'config.json').read_text())
    for key, value in changes.items():
        if key == 'model_args':
            config['model_args'] = {**config.get('model_args', {}), **value}
        else:
            config[key] = value
    (folder / 'config.json').write_text(json.dumps(config))


def edit_pretrained_cfg(folder, **changes):
    config = json.loads((folder / 'config.json').read_text())
    config['pretrained_cfg'].update(changes)
    (folder / 'config.json').write_text(json.dumps(config))


def flip_bit(path: Path, offset: int):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def image(path, size=(64, 64), color=(0, 0, 0)):
    from PIL import Image
    Image.new('RGB', size, color).save(path)
    return path


def class_tree(root, formats=('png',), per_class=2, classes=('cat', 'dog')):
    from PIL import Image
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt = formats[i % len(formats)]
            Image.new('RGB', (40, 40), (60 * c, 30 * i, 90)).save(root / name / f'{i}.{fmt}')
    return root


_WALK = '''
import sys, json
from pathlib import Path
from fishzoo.data import folder_samples
samples, classes = folder_samples(Path(sys.argv[1]), '--data-dir')
print(json.dumps([len(samples), sorted(classes)]))
'''


def walk_in_a_subprocess(root):
    """The class-folder walk in a fresh process with a time limit: on the old code these trees hang or explode."""
    proc = subprocess.run([sys.executable, '-c', _WALK, str(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    return json.loads(proc.stdout)


def start_training(args, out):
    """``python -m fishzoo.train ARGS --output-dir OUT`` in the background."""
    return subprocess.Popen([sys.executable, '-m', 'fishzoo.train', *args, '--output-dir', str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_9_once_written(proc, path, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists (failing the test if the run ends or ``timeout`` passes first)."""
    import signal
    import time
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, f'training ended before {path.name} was written'
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
