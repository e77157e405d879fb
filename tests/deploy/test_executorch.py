"""fishzoo export --format executorch and fishzoo predict --backend executorch (ExecuTorch's XNNPACK delegate)."""
import json

import pytest
import timm

from fishzoo.cli import main
from fishzoo.deploy.export import export_folder
from fishzoo.errors import ConfigError
from fishzoo.predict import predict

pytestmark = [pytest.mark.deploy, pytest.mark.slow]


def test_int8_export_is_checked_on_held_out_images(trained_run, image_dataset, tmp_path, capsys):
    """--int8 with --val-data: XNNPACK's quantizer, every op of the FishNet still in the delegate (int8
    convolutions, adds and concatenations, and the fp32 ops between them), the accuracy of the written program
    on the run's held-out images in the record and the card, and predict runs it."""
    out = tmp_path / 'et8'
    assert main(['export', str(trained_run), '--format', 'executorch', '--int8', '--calib-data', str(trained_run),
                 '--val-data', str(trained_run), '--max-drop', '100', '-o', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'int8' in printed and 'every op in the XNNPACK delegate' in printed and 'top-1 on 12 images' in printed
    record = json.loads((out / 'config.json').read_text())['export']
    assert record['weights'] == 'int8' and record['ops_outside_delegate'] == {}
    assert record['calibration']['images'] == 24 and record['accuracy']['images'] == 12
    assert 'max_rel_diff_fp32' not in record  # int8 is judged by its accuracy, not against fp32 logits
    assert "int8 by ExecuTorch's XNNPACKQuantizer" in (out / 'README.md').read_text()
    images = sorted(str(p) for p in (image_dataset / 'val').rglob('*.png'))
    ours = predict(str(out), images, top_k=1)
    reference = predict(str(trained_run), images, top_k=1, precision='fp32')
    same = sum(a['labels'][0][0] == b['labels'][0][0] for a, b in zip(ours, reference))
    assert same / len(images) * 100 == pytest.approx(record['accuracy']['agreement'])


def test_mistakes_get_one_sentence(tmp_path, capsys):
    assert main(['export', 'fishnet_s64', '--format', 'executorch', '--int8', '-o', str(tmp_path / 'x')]) == 2
    assert '--int8 needs --calib-data' in capsys.readouterr().err
    with pytest.raises(ConfigError, match='--precision bf16 is for torch and OpenVINO: ExecuTorch runs fp32'):
        export_folder(timm.create_model('fishnet_s64'), tmp_path / 'y', 'executorch', precision='bf16')


def test_a_garbage_program_is_one_sentence(trained_run, tmp_path, capsys):
    """ExecuTorch's loader aborted the whole process (exit 134) on a model.pte of garbage."""
    import shutil
    folder = tmp_path / 'et'
    folder.mkdir()
    shutil.copyfile(trained_run / 'config.json', folder / 'config.json')
    image = next((trained_run.parent).rglob('*.png'), None) or _image(tmp_path)
    for garbage in (bytes(range(256)) * 16, b'\x3c\x00\x00\x00ET12' + bytes(range(200))):
        (folder / 'model.pte').write_bytes(garbage)
        assert main(['predict', str(folder), str(image), '--backend', 'executorch']) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f'{folder / "model.pte"}: ' in err[0], err


def _image(tmp_path):
    from PIL import Image
    Image.new('RGB', (32, 32), (10, 200, 30)).save(tmp_path / 'x.png')
    return tmp_path / 'x.png'
