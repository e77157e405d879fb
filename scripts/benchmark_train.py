#!/usr/bin/env python3
"""Run the default training recipe (embedded digits) for 10 epochs; print img/s and seconds per epoch.

    python scripts/benchmark_train.py [--epochs 10] [--json out.json] [-- extra fishzoo-train flags]
"""
import argparse
import json
import sys

from fishzoo.benchmark import train_benchmark, train_benchmark_table

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--json', help='also write the result as JSON')
    parser.add_argument('extra', nargs='*', help='further fishzoo-train flags (after --)')
    args = parser.parse_args()
    result = train_benchmark(args.epochs, extra_args=args.extra)
    print(train_benchmark_table(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    sys.exit(0)
