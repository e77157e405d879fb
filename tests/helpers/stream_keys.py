"""The keys each batch of a streamed epoch holds, read with real loader worker processes in a fresh interpreter:

    python -m tests.helpers.stream_keys '[{"source": SHARDS_OR_hf:DATASET, "world": 2, "rank": 0, "workers": 2,
                                           "batch": 32, "epoch": 0, "resume": 0}, ...]'

prints one list of batches (each a list of keys) per job as JSON. A test process that has loaded OpenVINO,
inductor's compile workers and the rest of the suite is no place to fork DataLoader workers from (it crashed
there once); a user's training process is a fresh one like this.
"""
import json
import sys

import numpy as np
import torch

from fishzoo import shards


def to_tensor(image):
    return torch.from_numpy(np.asarray(image, np.float32))


def epoch_batches(job):
    source = job['source']
    manifest = shards.hf_stream_manifest(source[3:]) if source.startswith('hf:') else shards.read_manifest(source)
    stream = shards.ShardStream(manifest, 'train', mode='L', transform=to_tensor, batch_size=job['batch'],
                                rank=job.get('rank', 0), world=job.get('world', 1))
    stream.with_keys = True
    loader = shards.StreamLoader(stream, 'cpu', job['workers'])
    loader.set_epoch(job.get('epoch', 0))
    loader.resume_at(job.get('resume', 0))
    return [list(keys) for _, _, keys in loader]


if __name__ == '__main__':
    print(json.dumps([epoch_batches(job) for job in json.loads(sys.argv[1])]))
