"""`fima-models list` / `info` and the README/docs model table kept in sync with the registry."""
import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import fima_models.cli.download as download_cli
from fima_models.cli import main
from fima_models.cli.info import summarize_model
from fima_models.cli.list_models import markdown_model_table

ROOT = Path(__file__).resolve().parents[1]
TABLE = re.compile(r'<!-- model-table:start -->\n(.*?)<!-- model-table:end -->', re.S)


def test_list_and_pretrained(capsys):
    assert main(['list']) == 0
    assert capsys.readouterr().out.split() == ['i3d', 'i3d_tf', 'mc3_18', 'r2plus1d_18', 'r3d_18', 's3d']
    assert main(['list', '*tv_k400', '--pretrained']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.endswith('\tpublished') for line in lines)


def test_info_reports_params_flops_and_tags(capsys):
    assert main(['info', 'r2plus1d_fima', '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['name'] == 'r2plus1d_18'
    assert info['params'] == 31_505_325 - (512 * 400 + 400)  # torchvision's r2plus1d_18 without its 400-way head
    assert info['input_size'] == [3, 16, 112, 112]
    assert 70 < info['gflops'] < 90  # 2 FLOPs per multiply-add; torchvision lists 40.5 GMACs
    assert ['r2plus1d_18.fima_k400', False] in info['tags']


def test_info_unknown_model_fails_with_suggestion(capsys):
    assert main(['info', 'r3d_81']) == 1
    assert 'r3d_18' in capsys.readouterr().err


def test_i3d_gflops_at_default_input():
    info = summarize_model('i3d')
    assert info.num_features == 1024
    assert info.feature_info[-1]['num_chs'] == 1024


def test_model_table_in_docs_is_generated_from_registry():
    for doc, prefix in (('README.md', ''), ('docs/models.md', '../')):
        match = TABLE.search((ROOT / doc).read_text())
        assert match, f'{doc} has no model-table markers'
        assert match.group(1) == markdown_model_table(prefix), (
            f'{doc} model table is stale: regenerate with `fima-models list --markdown --link-prefix "{prefix}"`')


def test_model_table_links_every_model_to_an_existing_source_file(capsys):
    assert main(['list', '--markdown', '--link-prefix', '../']) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    links = [re.search(r'\| \[(\w+\.py)\]\(\.\./([\w/]+\.py)\) \|$', row) for row in rows]
    assert rows and all(links), rows
    for row, link in zip(rows, links):
        arch = row.split('`')[1]
        path = ROOT / link.group(2)
        assert path.name == link.group(1) and path.is_file()
        assert f'def {arch}(' in path.read_text(), f'{path} does not define {arch}'


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, '-m', 'fima_models.cli', 'list', 'i3d'],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'i3d'


def test_os_error_is_one_line_naming_the_path(capsys, monkeypatch):
    def read_only_cache(name):
        raise OSError(errno.EROFS, 'Read-only file system', '/cache/hub/model.safetensors')

    monkeypatch.setattr(download_cli, 'download_pretrained', read_only_cache)
    assert main(['download', 'r2plus1d_18.tv_k400']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fima-models download: error: cannot write '/cache/hub/model.safetensors': "
                   'the file system is read-only; choose a writable output folder']
