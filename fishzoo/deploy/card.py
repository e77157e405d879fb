"""The README.md of an exported folder: what it holds, how to run it, and the int8 accuracy measured against
the fp32 model when the export was checked on held-out images. Every format-specific word comes from the
format's row (:mod:`fishzoo.deploy.formats`)."""
from fishzoo.precision import RUNTIME_DEFAULT, from_record, runtime_default_reason

from .formats import FORMATS


def export_card(config: dict) -> str:
    """The card of the exported folder whose ``config.json`` (with its ``export`` record) is ``config``."""
    record = config['export']
    arch = config.get('architecture', 'model')
    fmt = FORMATS[record['format']]
    weights = record.get('weights', record.get('precision'))
    shape = (f'fixed input {record["input_shape"]} (N, C, H, W)' if 'input_shape' in record
             else 'batch, height and width dynamic')
    cfg = config.get('pretrained_cfg') or {}
    lines = [
        '---', 'library_name: ' + fmt.name,
        f'tags: [image-classification, fishzoo, {fmt.name}' + (', int8' if weights == 'int8' else '') + ']', '---',
        '', f'# {arch} ({fmt.name}, {weights})', '',
        f'`{arch}` exported by `fishzoo export` for {fmt.runs_in}: `{record["file"]}`, {shape}, '
        f'BatchNorm folded. `config.json` is the source model\'s (preprocessing, {config.get("num_classes")} '
        'labels) with an `export` record of how this folder was made.', '',
        '```bash', f'fishzoo predict path/to/this/folder image.jpg --backend {fmt.name}', '```', '',
        f"Input: {cfg.get('input_size')}, mean {cfg.get('mean')}, std {cfg.get('std')}, "
        f"{cfg.get('interpolation')} resize to 1/{cfg.get('crop_pct')} then center crop.", '',
    ]
    if 'max_rel_diff_fp32' in record:
        worst = max(record['max_rel_diff_fp32'].values())
        ran = from_record(record.get('checked_in')) or 'fp32'
        lines += [f'The fp32 export, run in {ran}, matches PyTorch within {worst:.1e} (relative, at '
                  f'{", ".join(record["max_rel_diff_fp32"])}).', '']
    if 'ops_outside_delegate' in record:
        outside = record['ops_outside_delegate']
        lines += [('Every operator runs in the XNNPACK delegate.' if not outside else
                   f'{sum(outside.values())} operators run outside the XNNPACK delegate, in {fmt.runtime}\'s own '
                   f'kernels: {", ".join(f"{k} x{v}" for k, v in sorted(outside.items()))}.'), '']
    compute = from_record(record.get('compute', record.get('inference_precision')))
    if compute == RUNTIME_DEFAULT:
        lines += [f"It runs in {fmt.runtime}'s default precision for the CPU it runs on "
                  f'({runtime_default_reason(fmt.name)}). Export with `--precision fp32`, or predict with '
                  '`--precision fp32`, for exact fp32.', '']
    elif compute and runtime_default_reason(fmt.name):
        lines += [f'It runs in {compute} (`--precision` at export; `fishzoo predict --precision` overrides).', '']
    if weights == 'int8':
        calib = record.get('calibration', {})
        lines += [f'int8 by {fmt.int8_method}, calibrated on {calib.get("images")} images of '
                  f'`{calib.get("source")}`.', '']
        acc = record.get('accuracy')
        if acc:
            name = 'top-1 (%)' if acc['metric'] == 'top1' else 'micro-F1 (%)'
            kept = (f'{len(acc["layers_in_fp32"])} of {acc["total_layers"]} convolutions kept in fp32 by the '
                    f'accuracy-aware search' if acc['layers_in_fp32'] else
                    f'{acc["quantized_layers"]} of {acc["total_layers"]} convolution/linear layers in int8')
            reference = acc.get('reference', 'fp32')
            allowed = acc.get('allowed', acc['max_drop'])
            lines += [f'Measured on {acc["images"]} held-out images of `{acc["source"]}`, against the float model '
                      f'run in {reference} as this folder runs:', '',
                      f'| | {reference} | int8 | drop (points) | allowed | same decision as {reference} |',
                      '|---|---:|---:|---:|---:|---:|',
                      f'| {name} | {acc["fp32"]:.2f} | {acc["int8"]:.2f} | {acc["drop"]:.2f} | {allowed:.2f} '
                      f'| {acc["agreement"]:.2f}% |', '', kept + '.', '']
            if allowed > acc['max_drop']:
                lines += [f'One image of {acc["images"]} is {allowed:.2f} points: the asked `--max-drop` '
                          f'{acc["max_drop"]:g} was judged at one image, the finest these images resolve.', '']
        else:
            lines += ['Accuracy not measured: export with `--val-data` to check int8 against fp32 on held-out '
                      'images (and to keep the most sensitive layers in fp32 until the drop fits `--max-drop`).', '']
    return '\n'.join(lines)
