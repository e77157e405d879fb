#!/usr/bin/env python3
"""Transfer on the embedded digits: pretrain on 0-4, fine-tune on 5-9 with each mode vs random init.

    python scripts/transfer_digits.py [--work-dir output/transfer] [--json result.json]
"""
import argparse

from fishzoo.benchmark import transfer_study, transfer_table

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='output/transfer')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--json', help='also write the result as JSON')
    args = parser.parse_args()
    result = transfer_study(args.work_dir, epochs=args.epochs)
    print(transfer_table(result))
    if args.json:
        import json
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
