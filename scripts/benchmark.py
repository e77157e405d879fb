#!/usr/bin/env python3
"""fishzoo's FishNet-150 against pytorchcv's and timm's ResNet-50, in one process, interleaved:
inference and training img/s, peak memory and the fraction of a conv roofline it measures itself.

    python scripts/benchmark.py [--quick] [--json out.json] [--readme README.md] [--device cuda]

Same as `fishzoo benchmark`; the full run takes about 12 minutes on 2 CPU cores (compilation included).
"""
import sys

from fishzoo.peer_benchmark import main

if __name__ == '__main__':
    sys.exit(main())
