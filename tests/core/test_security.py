"""User files come only from the data root; tampered model documents are refused."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from core_data import blobs

from qmlops import QuantumClassifier
from qmlops.config import DatasetConfig
from qmlops.data import load_dataset, resolve_data_path
from qmlops.errors import ModelFormatError, UnsafePathError
from qmlops.hashing import canonical_digest
from qmlops.model import DeployedModel, model_document, read_model_document, verify_model_document
from qmlops.preprocessing import make_preprocessor

CSV = "a,b,label\n" + "".join(f"{i},{i % 3},{'x' if i % 2 else 'y'}\n" for i in range(20))


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.csv").write_text(CSV)
    (tmp_path / "secret.csv").write_text(CSV)
    return root


def test_paths_inside_the_root_are_accepted(data_root: Path) -> None:
    assert resolve_data_path("sub/ok.csv", data_root) == data_root / "sub" / "ok.csv"
    absolute = str(data_root / "sub" / "ok.csv")
    assert resolve_data_path(absolute, data_root) == data_root / "sub" / "ok.csv"
    config = DatasetConfig(path="sub/ok.csv", target="label")
    assert load_dataset(config, data_root=data_root).features.shape == (20, 2)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../secret.csv", r"'\.\.'"),
        ("sub/../../secret.csv", r"'\.\.'"),
        ("%2e%2e/secret.csv", "percent-encoded"),
        ("sub%2Fok.csv", "percent-encoded"),
        ("file:///etc/passwd", "URL"),
        ("file:secret.csv", "URL"),
        ("https://example.com/data.csv", "URL"),
        ("/etc/passwd", "outside the data root"),
        ("sub/ok.csv\x00.txt", "NUL"),
    ],
)
def test_paths_that_leave_the_root_are_refused(data_root: Path, path: str, message: str) -> None:
    with pytest.raises(UnsafePathError, match=message):
        resolve_data_path(path, data_root)


def test_symlink_out_of_the_root_is_refused(data_root: Path) -> None:
    os.symlink(data_root.parent / "secret.csv", data_root / "link.csv")
    os.symlink(data_root.parent, data_root / "up")
    for path in ("link.csv", "up/secret.csv"):
        with pytest.raises(UnsafePathError, match="outside the data root"):
            load_dataset(DatasetConfig(path=path, target="label"), data_root=data_root)


def _document() -> dict:
    X, y = blobs(24, 2, 2)
    preprocessor = make_preprocessor(2, 2, 2.2)
    angles = preprocessor.fit_transform(X)
    classifier = QuantumClassifier(maxiter=2, batch_size=None, random_state=0).fit(angles, y)
    return model_document(preprocessor, classifier, ["a", "b"])


def test_tampered_model_documents_are_refused(tmp_path: Path) -> None:
    document = _document()
    assert verify_model_document(document) == document["body"]

    altered_weights = copy.deepcopy(document)
    altered_weights["body"]["classifier"]["weights"][0] += 0.5
    extra_section = copy.deepcopy(document)
    extra_section["body"]["code"] = "import os"
    extra_section["sha256"] = canonical_digest(extra_section["body"])  # a consistent hash
    with pytest.raises(ModelFormatError, match="unexpected model document sections"):
        verify_model_document(extra_section)
    for bad in (altered_weights, extra_section, {"body": document["body"]}, [], "x"):
        with pytest.raises(ModelFormatError):
            verify_model_document(bad)

    path = tmp_path / "model.json"
    path.write_text(json.dumps(altered_weights))
    with pytest.raises(ModelFormatError, match="integrity"):
        DeployedModel.load(path)
    path.write_text(json.dumps(document)[:-10])
    with pytest.raises(ModelFormatError, match="cannot read"):
        read_model_document(path)
    path.write_text(json.dumps(document))
    assert DeployedModel.load(path).classes == ["0", "1"]
