#!/usr/bin/env python3
"""The FishNet authors' checkpoint in, a hub folder out (same as `fishzoo convert`).

    python scripts/convert_fishnet.py ARCH CHECKPOINT --output-dir DIR [--push-to-hub REPO_ID]
"""
import sys

from fishzoo.cli import main

if __name__ == '__main__':
    sys.exit(main(['convert', *sys.argv[1:]]))
