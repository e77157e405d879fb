"""fishzoo.train.schedule: a warmup epoch ramps up within the epoch when the schedule steps every update."""
import pytest
import torch

from fishzoo.train import parse_args
from fishzoo.train.schedule import LRSchedule


def _lrs_through_the_first_epoch(extra, updates_per_epoch=10):
    args = parse_args(['--data-dir', 'x', '--lr', '0.01', '--epochs', '4', '--warmup-epochs', '1', *extra])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    schedule = LRSchedule(optimizer, args, updates_per_epoch)
    lrs = []
    for update in range(1, updates_per_epoch + 1):
        schedule.step_update(update)
        lrs.append(optimizer.param_groups[0]['lr'])
    schedule.step_epoch(1, None)
    return lrs, optimizer.param_groups[0]['lr']


def test_warmup_ramps_within_the_epoch_on_updates():
    lrs, after = _lrs_through_the_first_epoch(['--sched-on-updates'])
    warmup = lrs[:9]  # the LRs of updates 2-10; update 10 ends the warmup and the cosine takes over
    assert warmup == sorted(warmup) and 1e-5 < warmup[0] < warmup[-1] < 0.01 and lrs[-1] > 0.008
    assert after == lrs[-1]  # the epoch step leaves an update-stepped schedule alone


def test_warmup_on_epochs_spends_the_first_epoch_at_the_warmup_lr():
    lrs, after = _lrs_through_the_first_epoch([])
    assert lrs == [pytest.approx(1e-5)] * len(lrs) and after > 0.008  # timm's default
