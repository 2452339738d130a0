"""Result tables in README.md and docs/ are generated from stored rows, never typed."""

import json
import shutil

import pytest

from eaq.cli.main import main
from eaq.errors import EaqError
from eaq.paths import repo_root
from eaq.study.tables import check_documents, documents, update_document, write_documents

ROOT = repo_root()
ROWS = "results/seed-cifar100.json"
DOC = f"""\
# results

<!-- eaq-table kind=summary rows={ROWS} configs=FP32,W4A4 -->
typed by hand
<!-- /eaq-table -->

text between tables stays

<!-- eaq-table kind=model rows={ROWS} model=resnet18_cifar -->
<!-- /eaq-table -->
"""


def test_committed_tables_equal_what_the_stored_rows_give():
    docs = {p.relative_to(ROOT).as_posix() for p in documents(ROOT)}
    assert {"README.md", "docs/results.md"} <= docs
    assert check_documents(ROOT) == [], "run `eaq tables` and commit the tables"


@pytest.fixture
def project(tmp_path):
    (tmp_path / "results").mkdir()
    shutil.copy(ROOT / ROWS, tmp_path / ROWS)
    (tmp_path / "README.md").write_text(DOC)
    return tmp_path


def test_tables_are_rewritten_from_rows_and_follow_a_changed_row(project):
    readme = project / "README.md"
    assert check_documents(project) == [readme]
    assert write_documents(project) == [readme]
    assert check_documents(project) == []
    text = readme.read_text()
    assert "typed by hand" not in text and "text between tables stays" in text
    rows = json.loads((project / ROWS).read_text())["rows"]
    fp32 = next(r for r in rows if r["model"] == "resnet18_cifar" and r["config"] == "FP32")
    assert "| FP32 | " in text and f"{fp32['top1']:.2f}" in text
    # a changed stored result changes the committed table, and the check sees it
    doc = json.loads((project / ROWS).read_text())
    w4 = next(r for r in doc["rows"] if r["model"] == "resnet18_cifar" and r["config"] == "W4A4")
    w4["top1"] += 1.234
    (project / ROWS).write_text(json.dumps(doc))
    assert check_documents(project) == [readme]
    old, new = update_document(readme, project)
    assert f"{w4['top1']:.2f}" in new and f"{w4['top1']:.2f}" not in old
    # so does a hand edit of a generated number
    write_documents(project)
    readme.write_text(readme.read_text().replace(f"{w4['top1']:.2f}", "99.99"))
    assert main(["tables", "--check", "--root", str(project)]) == 1
    assert main(["tables", "--root", str(project)]) == 0
    assert main(["tables", "--check", "--root", str(project)]) == 0


@pytest.mark.parametrize(
    "block, message",
    [
        ("kind=plot rows=x.json", "table kind 'plot'; valid: summary, model, published, energy"),
        ("kind=model rows=results/seed-cifar100.json", "a model table needs"),
        ("kind=summary rows", "option 'rows' is not key=value"),
        ("kind=summary rows=results/absent.json", "rows file not found"),
        (f"kind=model rows={ROWS} model=vgg", "model 'vgg' has no rows"),
        (f"kind=summary rows={ROWS} configs=W3A3", "configuration 'W3A3' has no rows"),
    ],
)
def test_bad_blocks_name_the_line_and_what_is_valid(project, block, message, capsys):
    (project / "README.md").write_text(f"# x\n\n<!-- eaq-table {block} -->\n<!-- /eaq-table -->\n")
    with pytest.raises(EaqError, match=message.replace("(", r"\(")):
        update_document(project / "README.md", project)
    assert main(["tables", "--check", "--root", str(project)]) == 2
    assert message.split(";")[0] in capsys.readouterr().err
