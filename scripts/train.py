#!/usr/bin/env python3
"""Train a timm model with Accelerate into a hub folder (see fishzoo/train/ and docs/training.md).

    accelerate launch scripts/train.py [options]
"""
import sys

from fishzoo.train import main

if __name__ == '__main__':
    sys.exit(main())
