"""What this machine's CPU offers for 16-bit and 8-bit arithmetic, and the precision that pays on it.

Which precision is fastest on a CPU depends on its matrix units, by a factor of 2-4: with AMX (Intel
Sapphire Rapids and later, as on some of the machines this project is measured on) oneDNN runs bf16
convolutions on tiles, 4x fp32 on FishNet-150 (``benchmarks/deploy.py``); with AVX512-BF16 alone its bf16
convolutions are *slower* than fp32 (0.65x on FishNet-150, measured with oneDNN limited to AVX512-BF16,
``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``), so ``'auto'`` means bf16 exactly where AMX-BF16 is present.

The flags come from ``/proc/cpuinfo`` where there is one (Linux names AMX-BF16 and AMX-INT8 apart) and
otherwise from torch's own CPU queries (``torch.cpu._is_amx_tile_supported`` and friends).
"""
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Set

import torch

from fishzoo.errors import ConfigError

PRECISIONS = ('auto', 'fp32', 'bf16')
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

    @property
    def fast_precision(self) -> str:
        """The precision ``'auto'`` picks for inference and CPU training: bf16 where AMX-BF16 is present."""
        return 'bf16' if self.amx_bf16 else 'fp32'

    def why(self) -> str:
        """One sentence on why :attr:`fast_precision` is what it is."""
        if self.amx_bf16:
            return 'this CPU has AMX-BF16 (bf16 matrix units: about 4x fp32 convolutions)'
        if self.avx512_bf16:
            return 'this CPU has AVX512-BF16 but no AMX, where bf16 convolutions are slower than fp32'
        return 'this CPU has no bf16 matrix units'


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


def check_precision(precision: str, what: str = 'precision') -> None:
    """One sentence for a ``precision`` that is not 'auto', 'fp32' or 'bf16'."""
    if precision not in PRECISIONS:
        raise ConfigError(f'{what} must be one of {", ".join(PRECISIONS)}, got {precision!r}')


def resolve_precision(precision: str, what: str = 'precision') -> str:
    """``'fp32'`` or ``'bf16'`` for ``precision`` ('auto', 'fp32' or 'bf16') on this CPU."""
    check_precision(precision, what)
    return cpu_features().fast_precision if precision == 'auto' else precision
