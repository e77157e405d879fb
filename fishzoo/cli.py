"""The ``fishzoo`` command.

    fishzoo list [PATTERN] [--pretrained]     fishzoo's model names (or pretrained tags)
    fishzoo info [MODEL] [--json]             params, GMACs, feature levels, pretrained tags; without a
                                              model: this machine's CPU features and auto precision
    fishzoo table [--write|--check README]    the README's models table, generated
    fishzoo convert ARCH CHECKPOINT --output-dir DIR [--push-to-hub REPO_ID]
                                              the authors' FishNet checkpoint -> hub folder
    fishzoo push FOLDER REPO_ID [--private]   upload a hub folder (token: HF_TOKEN or `hf auth login`)
    fishzoo upgrade FOLDER                    bring a hub folder written by an older fishzoo up to date
    fishzoo predict MODEL_OR_DIR IMAGES... [--top-k K] [--output CSV] [--json] [--backend B] [--precision P]
                   [--compile auto|always|never]
                                              labels of images (files, folders, globs) with a folder or model,
                                              run by torch or an exported folder's runtime
    fishzoo shards (--data-dir DIR | --train-csv CSV [--val-csv CSV] | --digits) --output-dir OUT
                   [--val-split F] [--seed S] [--shard-size 256MB]
                                              training data as WebDataset shards plus manifest.json, which
                                              fishzoo-train --data-dir OUT streams
    fishzoo shards --train-shards PATTERN --val-shards PATTERN --output-dir OUT [--classes a,b]
                                              a manifest for shards another tool wrote, where they are
    fishzoo demo FOLDER [--port 7860]         a Gradio page: drop an image, see the labels
    fishzoo export MODEL_OR_DIR --format FORMAT [-o DIR] [--img-size H [W]] [--opset N]
                   [--int8 --calib-data IMAGES [--val-data LABELLED --max-drop POINTS]] [--precision P]
                                              a deployment folder (checked against PyTorch), int8
                                              calibrated and accuracy-checked on request; the formats are
                                              fishzoo.deploy.formats.FORMATS (onnx, openvino, executorch, litert)

A user's mistake ends the command with one line on stderr and exit status 2, never a traceback. The
benchmarks live in a checkout's ``benchmarks/`` folder (``python benchmarks/peers.py``), not in the package.
"""
import argparse
import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import fishzoo
from fishzoo.deploy.formats import BACKENDS, FORMATS
from fishzoo.deploy.onnx import DEFAULT_OPSET
from fishzoo.errors import FishzooError, UserError
from fishzoo.hub.schema import MAX_INPUT_SIDE
from fishzoo.images import refuse_bombs_quietly
from fishzoo.precision import PRECISIONS, RUNTIME_DEFAULT, for_runtime
from fishzoo.shards import DEFAULT_SHARD_BYTES, parse_size


def _cmd_list(args: argparse.Namespace) -> int:
    for name in fishzoo.list_models(args.pattern, pretrained=args.pretrained):
        print(name)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from fishzoo.info import format_info, format_machine, machine_info, model_info
    if args.model is None:
        info, text = machine_info(), format_machine
    else:
        info, text = model_info(args.model), format_info
    print(json.dumps(info, indent=2) if args.json else text(info))
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


def _cmd_upgrade(args: argparse.Namespace) -> int:
    from fishzoo.hub import upgrade_folder
    changes = upgrade_folder(args.folder)
    print(f'{args.folder}: ' + ('; '.join(changes) if changes else 'up to date'))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from fishzoo.predict import ResultsFile, as_json, expand_images, iter_predictions
    from fishzoo.progress import Progress
    if args.top_k < 1:
        raise UserError(f'--top-k must be at least 1, got {args.top_k}')
    if not 1 <= args.batch_size <= 1024:
        raise UserError(f'--batch-size must be from 1 to 1024, got {args.batch_size}')
    if args.resume and not args.output:
        raise UserError('--resume continues an --output file; give --output FILE')
    images = expand_images(args.images)
    out = ResultsFile(args.output, resume=args.resume) if args.output else None
    if out is not None and out.done:
        before = len(images)
        images = [image for image in images if image not in out.done]
        print(f'--resume: {before - len(images):,} of {before:,} images are in {args.output} already',
              file=sys.stderr)
    results_json, progress = [], Progress(len(images))
    try:
        for batch in iter_predictions(args.model, images, top_k=args.top_k, batch_size=args.batch_size,
                                      backend=args.backend, precision=args.precision,
                                      compile={'auto': None, 'always': True, 'never': False}[args.compile]):
            if out is not None:
                out.write(batch)
            if args.json:
                results_json += [as_json(r) for r in batch]
            else:
                for result in batch:
                    labels = ', '.join(f'{label} ({prob:.3f})' for label, prob in result['labels']) or '(no label)'
                    print(f"{result['image']}: {labels}", flush=out is None)
            progress.update(len(batch))
    except KeyboardInterrupt:
        if out is None:
            raise
        print(f'interrupted: {args.output} holds the {out.count:,} images finished; --resume continues',
              file=sys.stderr)
        return 130
    finally:
        progress.close()
        if out is not None:
            out.close()
    if args.json:
        print(json.dumps(results_json, indent=2))
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    from fishzoo import data
    from fishzoo.shards import index_shards, write_shards
    if args.train_shards:  # shards another tool wrote: indexed where they are, nothing copied
        if not args.val_shards:
            raise UserError('--train-shards needs --val-shards (the validation shards, a pattern too)')
        classes = [c.strip() for c in args.classes.split(',')] if args.classes else None
        manifest = index_shards(args.train_shards, args.val_shards, args.output_dir, classes)
        splits = json.loads(manifest.read_text())['splits']
        print(f"{manifest}: train {splits['train']['samples']:,} samples in {len(splits['train']['shards'])} "
              f"shards, val {splits['val']['samples']:,} in {len(splits['val']['shards'])}")
        return 0
    if args.val_shards:
        raise UserError('--val-shards goes with --train-shards')
    if args.shard_count < 1:
        raise UserError(f'--shard-count must be at least 1, got {args.shard_count}')
    if args.val_split is not None and not 0 < args.val_split < 1:
        raise UserError(f'--val-split must be between 0 and 1, got {args.val_split}')
    # the hold-out fishzoo-train would make of the same source with the same --seed and --val-split
    if args.train_csv:
        loaded = data.csv_data(args.train_csv, args.val_csv, args.image_root, args.classes,
                               None if args.val_csv else args.val_split or 0.2, args.seed)
        source = args.train_csv
    elif args.data_dir:
        split = None if data.has_train_val_folders(args.data_dir) else args.val_split or 0.2
        loaded = data.image_folder_data(args.data_dir, split, args.seed)
        source = args.data_dir
    else:
        loaded = data.digits_data(args.val_split or 0.2, args.seed, mode='L')
        source = 'digits'
    for image, reason in loaded.skipped[:5]:
        print(f'skipped {image}: {reason}', file=sys.stderr)
    manifest = write_shards(loaded, args.output_dir, args.shard_size, args.shard_count, args.seed, source=str(source),
                            val_split=args.val_split)
    data.write_split(loaded, args.output_dir)  # the source files of each split, where there are files
    splits = json.loads(manifest.read_text())['splits']
    counts = ', '.join(f"{name} {split['samples']:,} samples in {len(split['shards'])} shards"
                       for name, split in splits.items())
    print(f'{manifest}: {counts}, {len(loaded.class_names)} classes')
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fishzoo.hub import check_hub_folder
    from fishzoo.loading import resolve_source
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


@contextmanager
def _narrated(logger_name: str):
    """``logger_name``'s INFO lines and warnings on stdout, timed, while the block runs: the steps of a long
    command (the library itself only logs)."""
    logger = logging.getLogger(logger_name)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter('  %(asctime)s %(message)s', datefmt='%H:%M:%S'))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _cmd_export(args: argparse.Namespace) -> int:
    from fishzoo.deploy.export import check_output_dir, export_and_verify, export_folder
    from fishzoo.deploy.formats import get_format
    from fishzoo.loading import load_model, resolve_source
    fmt = get_format(args.format)
    for_runtime(args.precision, fmt.name, runtime_name=fmt.runtime, log=False)  # a refusal before any loading
    source = resolve_source(args.model)
    output = Path(args.output or f'{source.display_name}-{fmt.name}{"-int8" if args.int8 else ""}')
    single_file = bool(args.output) and output.suffix == '.onnx'
    if single_file and (fmt.single_file != output.suffix or args.int8):
        raise UserError(f'-o {args.output}: a .onnx file holds an fp32 ONNX export; --int8 and the other formats '
                        'write a folder (give -o DIR)')
    if not single_file:  # before the model is loaded: a refusal should not wait for it
        check_output_dir(output, args.overwrite, source.folder)
    model = load_model(args.model, pretrained=args.pretrained or source.has_weights).eval()
    input_size = tuple(model.pretrained_cfg.get('input_size', (3, 224, 224)))
    if args.img_size:
        size = args.img_size * 2 if len(args.img_size) == 1 else args.img_size
        if len(size) != 2 or min(size) < 1:
            raise UserError(f'--img-size takes one or two positive numbers (H [W]), got {args.img_size}')
        minimum = getattr(model, 'min_input_size', 1)
        if min(size) < minimum or max(size) > MAX_INPUT_SIDE:
            raise UserError(f'--img-size {" ".join(map(str, args.img_size))}: {args.model} exports at sides from '
                            f'{minimum} to {MAX_INPUT_SIDE} px')
        input_size = (input_size[0], *size)
    if single_file:  # one self-contained file, as before folders: labels and preprocessing in its metadata
        result = export_and_verify(model, output, input_size, opset=args.opset, dynamic=not args.static,
                                   verify=not args.no_verify)
        shape = ('dynamic batch and spatial size' if not args.static
                 else f'fixed input 2x{"x".join(map(str, input_size))}')
        print(f"wrote {output} (opset {args.opset}, {shape}) in {result['seconds']:.1f} s")
        for size, rel in result.get('max_rel_diff', {}).items():
            print(f'  {fmt.runtime} vs PyTorch at {size}: {rel:.1e} relative')
        return 0
    if args.static:
        raise UserError('--static applies to a single .onnx file (-o FILE.onnx); folders are exported dynamic')
    with _narrated('fishzoo.deploy'):  # an int8 export runs for minutes: each step says when it starts
        record = export_folder(model, output, fmt.name, input_size, int8=args.int8, calib_data=args.calib_data,
                               val_data=args.val_data, max_drop=args.max_drop, opset=args.opset,
                               source_folder=source.folder, verify=not args.no_verify, overwrite=args.overwrite,
                               precision=args.precision)
    compute = record['compute']
    runs_in = (f", runs in {fmt.runtime}'s default precision for the CPU" if compute == RUNTIME_DEFAULT
               else f', runs in {compute}')
    shape = (f"input {'x'.join(map(str, record['input_shape']))}" if 'input_shape' in record
             else 'dynamic batch and spatial size')
    print(f"wrote {output}/ ({record['file']}, {record['weights']}{runs_in}, {shape}) in {record['seconds']:.1f} s")
    if 'ops_outside_delegate' in record:
        outside = record['ops_outside_delegate']
        print('  every op in the XNNPACK delegate' if not outside else
              f"  {sum(outside.values())} ops outside the XNNPACK delegate: {outside}")
    for size, rel in record.get('max_rel_diff_fp32', {}).items():
        print(f"  {fmt.name} ({record.get('checked_in', 'fp32')}) vs PyTorch at {size}: {rel:.1e} relative")
    accuracy = record.get('accuracy')
    if accuracy:
        name = 'top-1' if accuracy['metric'] == 'top1' else 'micro-F1'
        allowed = accuracy.get('allowed', accuracy['max_drop'])
        print(f"  {name} on {accuracy['images']} images: {accuracy.get('reference', 'fp32')} {accuracy['fp32']:.2f}, "
              f"int8 {accuracy['int8']:.2f} (drop {accuracy['drop']:.2f} points, allowed {allowed:.2f}); same "
              f"decision on {accuracy['agreement']:.2f}%; {accuracy['quantized_layers']} of "
              f"{accuracy['total_layers']} layers in int8")
    return 0
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='fishzoo', description='The FishNet family as timm models.')
    parser.add_argument('--version', action='version', version=f'fishzoo {fishzoo.__version__}')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser('list', help="list fishzoo's models")
    p.add_argument('pattern', nargs='?', default='', help="wildcard filter, e.g. 'fishnet*'")
    p.add_argument('--pretrained', action='store_true', help='list pretrained tags instead of architectures')
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser('info', help="params, GMACs, feature levels and pretrained tags of a model; without one, "
                                    "this machine's CPU features and the precision 'auto' picks on it")
    p.add_argument('model', nargs='?', help='timm name, hub folder, local-dir:PATH or hf-hub:REPO_ID')
    p.add_argument('--json', action='store_true', help='print JSON')
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser('table', help="print the README's models table, or update / check it in a file")
    group = p.add_mutually_exclusive_group()
    group.add_argument('--write', metavar='README', help='replace the table between the markers in README')
    group.add_argument('--check', metavar='README', help='exit 1 if the table in README is out of date')
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser('convert', help="convert the FishNet authors' (or pytorchcv's) checkpoint to a hub folder")
    p.add_argument('arch', metavar='ARCH',
                   help='fishnet99, fishnet150, fishnet201, or a tag such as fishnet150.in1k_ls')
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

    p = sub.add_parser('upgrade', help="rewrite an older hub folder's config.json so that transformers reads it too")
    p.add_argument('folder', metavar='FOLDER')
    p.set_defaults(func=_cmd_upgrade)

    p = sub.add_parser('predict', help='labels of images, with a hub folder or a timm model')
    p.add_argument('model', metavar='MODEL_OR_DIR', help='hub folder, local-dir:PATH, hf-hub:REPO_ID or timm name')
    p.add_argument('images', metavar='IMAGES', nargs='+',
                   help="image files, folders (every image under them) or glob patterns ('photos/**/*.jpg')")
    p.add_argument('--top-k', type=int, default=5, help='labels per image (single-label models)')
    p.add_argument('--output', metavar='FILE',
                   help='also write the results as they are produced: FILE.jsonl one JSON object per image, '
                        'otherwise CSV rows image,rank,label,probability (kept if interrupted)')
    p.add_argument('--resume', action='store_true',
                   help='continue an interrupted run: skip the images already in --output and append')
    p.add_argument('--batch-size', type=int, default=16, help='images per batch (default 16)')
    p.add_argument('--json', action='store_true', help='print a JSON list, one {image, labels, scores} per image')
    p.add_argument('--backend', choices=BACKENDS,
                   help=f'what runs the model: torch (hub folders, timm names) or {", ".join(FORMATS)} (a folder '
                        'fishzoo export wrote); default: what the folder holds')
    p.add_argument('--precision', default='auto', metavar='{' + ','.join(PRECISIONS) + '}',
                   help="auto: torch in the precision that pays on this CPU (`fishzoo info` says), an exported "
                        "folder as exported; fp32: exact; bf16: torch and openvino backends")
    p.add_argument('--compile', choices=('auto', 'always', 'never'), default='auto',
                   help='torch models: auto compiles the fast path (or runs OpenVINO where it measures faster) once '
                        'the images left would take long enough to pay for compiling; the folded model runs '
                        'until then')
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser('shards', help='write class folders, a multi-label CSV or the digits as WebDataset shards '
                                      'with a manifest, for fishzoo-train --data-dir SHARDS to stream')
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument('--data-dir', help='class folders (DIR/CLASS/IMAGE), or DIR/train and DIR/val trees')
    source.add_argument('--train-csv', help='multi-label image,labels CSV (as fishzoo-train --train-csv)')
    source.add_argument('--digits', action='store_true', help='the embedded digits')
    source.add_argument('--train-shards', metavar='PATTERN',
                        help="WebDataset shards another tool wrote, e.g. 's3://b/train-{000000..000099}.tar': "
                             'indexed where they are (each read once to count it) into --output-dir/manifest.json')
    p.add_argument('--val-shards', metavar='PATTERN', help='with --train-shards: the validation shards')
    p.add_argument('--val-csv', help='with --train-csv: the validation rows')
    p.add_argument('--image-root', help='with --train-csv: where relative image paths start')
    p.add_argument('--classes', help='with --train-csv or --train-shards: the class list, comma-separated')
    p.add_argument('--output-dir', required=True, help='an empty folder for the shards and manifest.json')
    p.add_argument('--val-split', type=float,
                   help='fraction held out for validation when the source has no val part (default 0.2, stratified '
                        'by class, the images fishzoo-train --val-split F --seed S holds out)')
    p.add_argument('--seed', type=int, default=0, help='the hold-out and the order samples are written in')
    p.add_argument('--shard-size', type=parse_size, default=DEFAULT_SHARD_BYTES, metavar='SIZE',
                   help='largest shard, e.g. 256MB (the default) or 1GB')
    p.add_argument('--shard-count', type=int, default=10000, metavar='N', help='most samples in a shard')
    p.set_defaults(func=_cmd_shards)

    p = sub.add_parser('demo', help='a web page to drop an image on and see the labels (Gradio)')
    p.add_argument('folder', metavar='FOLDER', help='a hub folder (training output, converted model)')
    p.add_argument('--top-k', type=int, default=5, help='labels shown (single-label models)')
    p.add_argument('--host', default='127.0.0.1', help="address to serve on ('0.0.0.0': every interface)")
    p.add_argument('--port', type=int, default=7860, help='port to serve on')
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser('export', help='export a model to ONNX, OpenVINO, ExecuTorch or LiteRT (fp32 or int8), '
                                      'checked against PyTorch')
    p.add_argument('model', metavar='MODEL_OR_DIR', help='timm name, hub folder, local-dir:PATH or hf-hub:REPO_ID')
    p.add_argument('--format', choices=FORMATS, default='onnx',
                   help='; '.join(f.help for f in FORMATS.values()))
    p.add_argument('--output', '-o', metavar='DIR',
                   help='the folder to write (default: MODEL-FORMAT[-int8] here); a FILE.onnx writes one fp32 file')
    p.add_argument('--int8', action='store_true',
                   help='post-training int8 quantization: ' + '; '.join(f'{f.name}: {f.int8_method}'
                                                                        for f in FORMATS.values()))
    p.add_argument('--calib-data', metavar='IMAGES',
                   help='calibration images for --int8: a run folder (its training split), a folder of images, '
                        'a CSV with an image column, or "digits" (the embedded demo data); up to 300 are used, '
                        'read with the model\'s eval transform')
    p.add_argument('--val-data', metavar='LABELLED',
                   help='held-out labelled images (a run folder: the images it held out; class folders; or the '
                        'training CSV format image,labels): '
                        'measure fp32 and int8 top-1 (micro-F1 for multi-label) and keep the most sensitive '
                        'layers in fp32 until the drop fits --max-drop')
    p.add_argument('--max-drop', type=float, default=0.5, metavar='POINTS',
                   help='largest accepted int8 drop in top-1 / micro-F1 points (default 0.5)')
    p.add_argument('--pretrained', action='store_true', help="load a timm name's pretrained weights")
    p.add_argument('--img-size', type=int, nargs='+', metavar='N', help="export size (default: the model's)")
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset, >= 17 (default {DEFAULT_OPSET})')
    p.add_argument('--static', action='store_true', help='with -o FILE.onnx: fix batch and spatial size')
    p.add_argument('--no-verify', action='store_true', help='skip the check against PyTorch')
    p.add_argument('--precision', default='auto', metavar='{' + ','.join(PRECISIONS) + '}',
                   help="what the folder computes in: auto = the runtime's own choice where it makes one "
                        "(OpenVINO: bf16 on CPUs with bf16 units, f32 elsewhere), fp32 (alias f32) = exact, "
                        "bf16 (OpenVINO); the other runtimes run fp32")
    p.add_argument('--overwrite', action='store_true',
                   help='export into a folder that holds files (its contents are replaced, whole)')
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
