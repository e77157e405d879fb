"""Every format of fishzoo.deploy.formats.FORMATS honours one contract: a trained folder exported to it is checked
against PyTorch, carries its source's labels and preprocessing, and predicts what torch predicts; the command
line, predict and the card know it from its row alone."""
import json

import pytest

from fishzoo.cli import build_parser, main
from fishzoo.deploy.formats import BACKENDS, FORMATS, detect_backend
from fishzoo.precision import runtime_default_reason
from fishzoo.predict import predict

pytestmark = [pytest.mark.deploy, pytest.mark.slow]


def test_the_command_line_offers_every_format():
    parser = build_parser()
    choices = {a.dest: a.choices for sub in parser._subparsers._group_actions[0].choices.values()
               for a in sub._actions if a.dest in ('format', 'backend')}
    assert list(choices['format']) == list(FORMATS) and list(choices['backend']) == list(BACKENDS)
    assert BACKENDS == ('torch', *FORMATS)


@pytest.mark.parametrize('name', [pytest.param(name, marks=[pytest.mark.litert] if name == 'litert' else [])
                                  for name in FORMATS])
def test_a_trained_folder_exports_and_predicts_as_torch(name, trained_run, image_dataset, tmp_path, capsys):
    fmt = FORMATS[name]
    out = tmp_path / name
    assert main(['export', str(trained_run), '--format', name, '--precision', 'fp32', '-o', str(out)]) == 0
    printed = capsys.readouterr().out
    assert f'wrote {out}/ ({fmt.file}, fp32, runs in fp32' in printed
    assert sorted(p.name for p in out.iterdir()) == sorted([*fmt.files, 'README.md', 'config.json'])
    assert detect_backend(out) == name
    config = json.loads((out / 'config.json').read_text())
    source = json.loads((trained_run / 'config.json').read_text())
    assert config['label_names'] == source['label_names'] and config['pretrained_cfg'] == source['pretrained_cfg']
    record = config['export']
    assert (record['format'], record['weights'], record['compute'], record['file']) == (name, 'fp32', 'fp32', fmt.file)
    assert max(record['max_rel_diff_fp32'].values()) < 1e-4
    if fmt.fixed_shape:  # the phone runtimes: batch 1, every op in the XNNPACK delegate
        assert record['input_shape'] == [1, 3, 32, 32] and record['ops_outside_delegate'] == {}
        assert 'every op in the XNNPACK delegate' in printed
    card = (out / 'README.md').read_text()
    assert f'for {fmt.runs_in}' in card and f'--backend {name}' in card

    images = sorted(str(p) for p in (image_dataset / 'val').rglob('*.png'))[:5]
    ours = predict(str(out), images, top_k=3)  # the backend comes from the folder
    reference = predict(str(trained_run), images, top_k=3, precision='fp32')
    for a, b in zip(ours, reference):
        assert [label for label, _ in a['labels']] == [label for label, _ in b['labels']]
        for (_, p), (_, q) in zip(a['labels'], b['labels']):
            assert p == pytest.approx(q, abs=1e-4)
    if runtime_default_reason(name) is None:  # a runtime that runs fp32 only refuses bf16 in one sentence
        assert main(['predict', str(out), images[0], '--precision', 'bf16']) == 2
        assert f'--precision bf16 is for torch and OpenVINO: {fmt.runtime} runs fp32' in capsys.readouterr().err
