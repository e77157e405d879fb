"""The ``fishzoo`` command.

    fishzoo list [PATTERN] [--pretrained]     fishzoo's model names (or pretrained tags)
    fishzoo info MODEL [--json]               params, GMACs, feature levels, pretrained tags
    fishzoo table [--write|--check README]    the README's models table, generated
    fishzoo convert ARCH CHECKPOINT --output-dir DIR [--push-to-hub REPO_ID]
                                              the authors' FishNet checkpoint -> hub folder
    fishzoo push FOLDER REPO_ID [--private]   upload a hub folder (token: HF_TOKEN or `hf auth login`)
    fishzoo predict MODEL_OR_DIR IMAGES... [--top-k K] [--output CSV] [--json]
                                              labels of images (files, folders, globs) with a folder or model
    fishzoo demo FOLDER [--port 7860]         a Gradio page: drop an image, see the labels
    fishzoo export MODEL_OR_DIR --format onnx [-o FILE] [--img-size H [W]] [--opset N]
                                              ONNX with dynamic batch/size, checked against onnxruntime

A user's mistake ends the command with one line on stderr and exit status 2, never a traceback. The
benchmarks live in a checkout's ``benchmarks/`` folder (``python benchmarks/peers.py``), not in the package.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import fishzoo
from fishzoo.errors import FishzooError, UserError
from fishzoo.export import DEFAULT_OPSET
from fishzoo.images import refuse_bombs_quietly


def _cmd_list(args: argparse.Namespace) -> int:
    for name in fishzoo.list_models(args.pattern, pretrained=args.pretrained):
        print(name)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from fishzoo.info import format_info, model_info
    try:
        info = model_info(args.model)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from fishzoo.info import models_table, replace_readme_table
    table = models_table()
    path = args.write or args.check
    if path is None:
        print(table)
        return 0
    path = Path(path)
    if not path.is_file():
        raise UserError(f'{path}: no such file; expected the README holding the models table')
    try:
        updated = replace_readme_table(path.read_text(), table)
    except ValueError as e:
        raise UserError(f'{path}: {e}') from None
    if args.write:
        path.write_text(updated)
        print(f'updated the models table in {path}')
        return 0
    if updated != path.read_text():
        print(f'{path}: the models table is out of date; run `fishzoo table --write {path}`', file=sys.stderr)
        return 1
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from fishzoo.convert import convert_fishnet
    out = convert_fishnet(args.arch, args.checkpoint, args.output_dir, args.push_to_hub, args.overwrite)
    print(f'wrote {out}' + (f' and uploaded it to {args.push_to_hub}' if args.push_to_hub else ''))
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from fishzoo.hub import push_to_hub
    url = push_to_hub(args.folder, args.repo_id, private=args.private)
    print(f'uploaded {args.folder} to {args.repo_id}: {url}')
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from fishzoo.predict import predict, write_csv
    if args.top_k < 1:
        raise UserError(f'--top-k must be at least 1, got {args.top_k}')
    results = predict(args.model, args.images, top_k=args.top_k)
    if args.json:
        print(json.dumps([dict(image=r['image'], labels=[label for label, _ in r['labels']],
                               scores=[round(score, 6) for _, score in r['labels']]) for r in results], indent=2))
    for result in results if not args.json else ():
        labels = ', '.join(f'{label} ({prob:.3f})' for label, prob in result['labels']) or '(no label)'
        print(f"{result['image']}: {labels}")
    if args.output:
        write_csv(results, args.output)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fishzoo.loading import resolve_source
    from fishzoo.models._hub_folder import check_hub_folder
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("fishzoo demo needs Gradio: pip install 'fishzoo[demo]'") from None
    from fishzoo.space_app import build_demo
    source = resolve_source(args.folder)
    if source.kind != 'folder':
        raise UserError(f'{args.folder}: not a folder; fishzoo demo serves a hub folder (a training run, '
                        'a converted or downloaded model)')
    check_hub_folder(source.folder)
    print(f'serving {source.folder} on http://{args.host}:{args.port} (Ctrl+C stops)', flush=True)
    build_demo(source.folder, top_k=args.top_k).launch(server_name=args.host, server_port=args.port,
                                                       share=False, show_error=True, quiet=True)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fishzoo.export import export_and_verify
    from fishzoo.loading import load_model, resolve_source
    source = resolve_source(args.model)
    model = load_model(args.model, pretrained=args.pretrained or source.has_weights).eval()
    input_size = tuple(model.pretrained_cfg.get('input_size', (3, 224, 224)))
    if args.img_size:
        size = args.img_size * 2 if len(args.img_size) == 1 else args.img_size
        if len(size) != 2 or min(size) < 1:
            raise UserError(f'--img-size takes one or two positive numbers (H [W]), got {args.img_size}')
        input_size = (input_size[0], *size)
    output = Path(args.output or f'{source.display_name}.onnx')
    result = export_and_verify(model, output, input_size, opset=args.opset, dynamic=not args.static,
                               verify=not args.no_verify)
    shape = 'dynamic batch and spatial size' if not args.static else f'fixed input 2x{"x".join(map(str, input_size))}'
    print(f"wrote {output} (opset {args.opset}, {shape}) in {result['seconds']:.1f} s")
    for size, rel in result.get('max_rel_diff', {}).items():
        print(f'  onnxruntime vs PyTorch at {size}: {rel:.1e} relative')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='fishzoo', description='The FishNet family as timm models.')
    parser.add_argument('--version', action='version', version=f'fishzoo {fishzoo.__version__}')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser('list', help="list fishzoo's models")
    p.add_argument('pattern', nargs='?', default='', help="wildcard filter, e.g. 'fishnet*'")
    p.add_argument('--pretrained', action='store_true', help='list pretrained tags instead of architectures')
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser('info', help='params, GMACs, feature levels and pretrained tags of a model')
    p.add_argument('model')
    p.add_argument('--json', action='store_true', help='print JSON')
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser('table', help="print the README's models table, or update / check it in a file")
    group = p.add_mutually_exclusive_group()
    group.add_argument('--write', metavar='README', help='replace the table between the markers in README')
    group.add_argument('--check', metavar='README', help='exit 1 if the table in README is out of date')
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser('convert', help="convert the FishNet authors' (or pytorchcv's) checkpoint to a hub folder")
    p.add_argument('arch', metavar='ARCH', help='fishnet99, fishnet150, fishnet201, or a tag such as fishnet150.in1k_ls')
    p.add_argument('checkpoint', metavar='CHECKPOINT', help="the authors' .tar file (a torch.save pickle)")
    p.add_argument('--output-dir', required=True, help='where to write config.json, model.safetensors, README.md')
    p.add_argument('--push-to-hub', metavar='REPO_ID', help='also upload the folder to this Hub repo')
    p.add_argument('--overwrite', action='store_true', help='replace a model already in --output-dir')
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser('push', help='upload a hub folder to the Hugging Face Hub')
    p.add_argument('folder', metavar='FOLDER')
    p.add_argument('repo_id', metavar='REPO_ID')
    p.add_argument('--private', action='store_true')
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser('predict', help='labels of images, with a hub folder or a timm model')
    p.add_argument('model', metavar='MODEL_OR_DIR', help='hub folder, local-dir:PATH, hf-hub:REPO_ID or timm name')
    p.add_argument('images', metavar='IMAGES', nargs='+',
                   help="image files, folders (every image under them) or glob patterns ('photos/**/*.jpg')")
    p.add_argument('--top-k', type=int, default=5, help='labels per image (single-label models)')
    p.add_argument('--output', metavar='CSV', help='also write image,rank,label,probability rows')
    p.add_argument('--json', action='store_true', help='print a JSON list, one {image, labels, scores} per image')
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser('demo', help='a web page to drop an image on and see the labels (Gradio)')
    p.add_argument('folder', metavar='FOLDER', help='a hub folder (training output, converted model)')
    p.add_argument('--top-k', type=int, default=5, help='labels shown (single-label models)')
    p.add_argument('--host', default='127.0.0.1', help="address to serve on ('0.0.0.0': every interface)")
    p.add_argument('--port', type=int, default=7860, help='port to serve on')
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser('export', help='export a model to ONNX, checked against onnxruntime')
    p.add_argument('model', metavar='MODEL_OR_DIR', help='timm name, hub folder, local-dir:PATH or hf-hub:REPO_ID')
    p.add_argument('--format', choices=['onnx'], default='onnx')
    p.add_argument('--output', '-o', metavar='FILE', help='default: MODEL.onnx in the current folder')
    p.add_argument('--pretrained', action='store_true', help="load a timm name's pretrained weights")
    p.add_argument('--img-size', type=int, nargs='+', metavar='N', help="export size (default: the model's)")
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset, >= 17 (default {DEFAULT_OPSET})')
    p.add_argument('--static', action='store_true', help='fix batch and spatial size instead of dynamic axes')
    p.add_argument('--no-verify', action='store_true', help='skip the onnxruntime check')
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    refuse_bombs_quietly()
    try:
        return args.func(args)
    except FishzooError as e:
        print(f'fishzoo {args.command}: {e}', file=sys.stderr)
        return e.exit_code


if __name__ == '__main__':
    sys.exit(main())
