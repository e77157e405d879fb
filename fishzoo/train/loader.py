"""``--workers auto``: how many loader processes feed each training process, and how batches reach the device.

timm's scripts default to 4 workers; neither that nor none fits both ends of what fishzoo trains. Images held
in memory (the embedded digits, 8x8 scans) are read faster in the training process than a worker process
hands a batch over; files (JPEGs decoded and augmented at a few hundred images/s per core) need every core
the model leaves free. The rule is fixed rather than timed, so that the same command on the same machine
draws the same workers and therefore the same augmentations:

* images in memory: no workers;
* an accelerator: all of this process's cores but one (at most :data:`MAX_WORKERS`): the model runs on the
  device, the cores only feed it;
* a CPU: half of this process's cores, none below four cores: the model computes on the same cores, and on
  two cores a worker only takes one from it (measured in docs/performance.md).

Pinned memory goes with CUDA. The count is logged with its reason and written to train_config.yaml.
"""
import logging
import os
from typing import Any, Dict, Optional, Union

import torch

_logger = logging.getLogger('fishzoo.train')

MAX_WORKERS = 8  # per process: more only adds memory (each worker holds a copy of the dataset's index)
CPU_WORKERS_FROM = 4  # cores per process from which a CPU run gives half to loader workers


def cores_per_process(local_processes: Optional[int] = None) -> int:
    """This process's share of the cores it may run on (``LOCAL_WORLD_SIZE`` processes share a machine)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    local = local_processes or int(os.environ.get('LOCAL_WORLD_SIZE', '1') or 1)
    return max(1, cores // max(1, local))


def in_memory(dataset) -> bool:
    """Whether ``dataset`` holds its images decoded in memory (no file to read per sample)."""
    from PIL import Image
    sources = getattr(dataset, 'sources', None)
    return sources is not None and len(sources) > 0 and isinstance(sources[0], Image.Image)


def auto_workers(dataset, device: Union[str, torch.device], cores: Optional[int] = None):
    """(worker count, why) for ``--workers auto``."""
    device = torch.device(device)
    cores = cores or cores_per_process()
    if in_memory(dataset):
        return 0, 'the images are in memory: read faster in the training process than a worker hands them over'
    if device.type != 'cpu':
        count = min(MAX_WORKERS, max(1, cores - 1))
        return count, f'{cores} cores for this process, one left to it (the model runs on {device.type})'
    if cores < CPU_WORKERS_FROM:
        return 0, f'{cores} cores for this process, which the model computes on (workers from {CPU_WORKERS_FROM})'
    return min(MAX_WORKERS, cores // 2), f'half of the {cores} cores this process has: the model computes on the rest'


def loader_settings(config, dataset, device: Union[str, torch.device]) -> Dict[str, Any]:
    """``workers`` as ``--workers auto`` decides it for ``dataset`` on ``device``, said in the log (nothing when a
    count was given)."""
    if config.workers != 'auto':
        return {}
    count, why = auto_workers(dataset, device)
    pinned = ', pinned memory' if torch.device(device).type == 'cuda' else ''
    _logger.info('--workers auto: %d loader worker process%s per training process%s (%s)', count,
                 '' if count == 1 else 'es', pinned, why)
    return dict(workers=count)


def dataloader_kwargs(workers: int, device: Union[str, torch.device]) -> Dict[str, Any]:
    """The DataLoader arguments for ``workers`` on ``device``: pinned memory on CUDA, workers kept between
    epochs."""
    return dict(num_workers=workers, pin_memory=torch.device(device).type == 'cuda',
                persistent_workers=workers > 0)


def workers_value(text: str) -> Union[int, str]:
    """--workers: 'auto' or a count from 0."""
    if str(text).strip().lower() == 'auto':
        return 'auto'
    count = int(text)
    if count < 0:
        raise ValueError(text)
    return count


workers_value.kind = "'auto' or a count from 0"

__all__ = ['auto_workers', 'cores_per_process', 'dataloader_kwargs', 'in_memory', 'loader_settings', 'workers_value']
