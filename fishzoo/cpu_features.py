"""What this machine's CPU offers for 16-bit and 8-bit arithmetic: AMX-BF16, AMX-INT8, AVX512-BF16, VNNI.

Which precision is fastest on a CPU depends on these units (by a factor of 2-4, docs/performance.md);
:mod:`fishzoo.precision` decides from them, and every benchmark table names them.

The flags come from ``/proc/cpuinfo`` where there is one (Linux names AMX-BF16 and AMX-INT8 apart) and
otherwise from torch's own CPU queries (``torch.cpu._is_amx_tile_supported`` and friends).
"""
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Set

import torch

CPUINFO = '/proc/cpuinfo'


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's 16-bit and 8-bit units (each True when present) and where the answer came from."""
    amx_bf16: bool
    amx_int8: bool
    avx512_bf16: bool
    vnni: bool  # AVX512-VNNI or AVX-VNNI: int8 dot products without AMX
    source: str  # '/proc/cpuinfo' | 'torch'

    @property
    def names(self):
        return [name for name, present in (('AMX-BF16', self.amx_bf16), ('AMX-INT8', self.amx_int8),
                                           ('AVX512-BF16', self.avx512_bf16), ('VNNI', self.vnni)) if present]

    def summary(self) -> str:
        """'AMX-BF16, AMX-INT8, AVX512-BF16, VNNI', or what is missing: the line benchmark tables carry."""
        return ', '.join(self.names) if self.names else 'no AMX, AVX512-BF16 or VNNI'


def _cpuinfo_flags() -> Optional[Set[str]]:
    try:
        text = Path(CPUINFO).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(('flags', 'Features')):
            return set(line.split(':', 1)[1].split())
    return None


def _torch_query(name: str) -> bool:
    query = getattr(torch.cpu, name, None)  # private, so missing on some builds: absent means "not known"
    try:
        return bool(query()) if query is not None else False
    except Exception:
        return False


@functools.lru_cache(maxsize=None)
def cpu_features() -> CpuFeatures:
    """This machine's :class:`CpuFeatures` (read once per process)."""
    flags = _cpuinfo_flags()
    if flags is not None:
        return CpuFeatures(amx_bf16='amx_bf16' in flags, amx_int8='amx_int8' in flags,
                           avx512_bf16='avx512_bf16' in flags,
                           vnni=bool({'avx512_vnni', 'avx_vnni'} & flags), source='/proc/cpuinfo')
    amx = _torch_query('_is_amx_tile_supported')
    return CpuFeatures(amx_bf16=amx, amx_int8=amx, avx512_bf16=_torch_query('_is_avx512_bf16_supported'),
                       vnni=_torch_query('_is_vnni_supported'), source='torch')
