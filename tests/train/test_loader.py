"""fishzoo.train.loader: --workers auto from where the images are, the device and the cores per process."""
import pytest
import torch

from fishzoo import data
from fishzoo.train import loader
from fishzoo.train.args import parse_args
from fishzoo.train.run_config import RunConfig


def files_dataset(n=4):
    return data.ImageSamples([f'/data/{i}.jpg' for i in range(n)], [0] * n)


@pytest.mark.parametrize('dataset, device, cores, expected', [
    (data.digits_data().train, 'cpu', 16, 0),  # images in memory: never workers
    (data.digits_data().train, 'cuda', 16, 0),
    (files_dataset(), 'cpu', 2, 0),  # two cores: the model computes on both (docs/performance.md measures it)
    (files_dataset(), 'cpu', 3, 0),
    (files_dataset(), 'cpu', 4, 2),
    (files_dataset(), 'cpu', 64, loader.MAX_WORKERS),
    (files_dataset(), 'cuda', 2, 1),
    (files_dataset(), 'cuda', 6, 5),
    (files_dataset(), 'cuda', 96, loader.MAX_WORKERS),
])
def test_auto_workers(dataset, device, cores, expected):
    count, why = loader.auto_workers(dataset, device, cores)
    assert count == expected and why


def test_cores_are_shared_by_the_local_processes(monkeypatch):
    cores_per_process = getattr(loader.cores_per_process, '__wrapped__', loader.cores_per_process)  # see conftest
    monkeypatch.setattr(loader.os, 'sched_getaffinity', lambda pid: set(range(16)), raising=False)
    assert cores_per_process(4) == 4
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '3')
    assert cores_per_process() == 5


def test_given_count_wins_and_auto_is_the_default(caplog):
    args = parse_args(['--output-dir', 'x'])
    assert args.workers == 'auto'
    assert loader.loader_settings(RunConfig.from_args(parse_args(['--workers', '3'])), files_dataset(), 'cpu') == {}
    with caplog.at_level('INFO', logger='fishzoo.train'):
        assert loader.loader_settings(RunConfig.from_args(args), files_dataset(), 'cuda') in (
            {'workers': n} for n in range(loader.MAX_WORKERS + 1))
    assert 'pinned memory' in caplog.text
    with pytest.raises(SystemExit):
        parse_args(['--workers', '-1'])


def test_dataloader_kwargs():
    assert loader.dataloader_kwargs(0, 'cpu') == dict(num_workers=0, pin_memory=False, persistent_workers=False)
    assert loader.dataloader_kwargs(4, torch.device('cuda')) == dict(num_workers=4, pin_memory=True,
                                                                     persistent_workers=True)
