"""``vmbench data check``: its findings on every generated format and on broken copies of them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmbench.cli import main
from vmbench.data.check import check_dataset

sys.path.insert(0, str(Path(__file__).parent))
import user_formats as F  # noqa: E402

WRITERS = [F.folder_png, F.folder_jpeg, F.folder_bmp, F.folder_tiff, F.folder_grey, F.folder_multiclass, F.nnunet_2d,
           F.nnunet_3d]


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.__name__)
def test_clean_datasets_pass_with_their_fingerprint(tmp_path, writer):
    root, truth = writer(tmp_path / writer.__name__)
    report = check_dataset(root)
    assert report.ok, report.errors
    fp = report.fingerprint
    assert fp["pairs"] == len(truth) and sum(fp["splits"].values()) == len(truth)
    shapes = {m.shape for m in truth.values()}
    assert fp["distinct_sizes"] == len(shapes)
    assert fp["height"] == (min(s[-2] for s in shapes), max(s[-2] for s in shapes))  # (D,) H, W
    # Foreground fraction per class, from the drawing.
    total = sum(m.size for m in truth.values())
    for k, name in enumerate(report.classes.names[1:], start=1):
        expected = sum(int((m == k).sum()) for m in truth.values()) / total
        tolerance = 0.002 if writer is F.folder_jpeg else 1e-12
        assert fp["foreground"][name] == pytest.approx(expected, abs=tolerance)
    assert len(report.lines()) <= 24  # one screen


def test_quirks_are_reported(tmp_path):
    jpeg = check_dataset(F.folder_jpeg(tmp_path / "jpeg")[0])
    assert any("thresholded at 128" in n for n in jpeg.notes)
    tiff = check_dataset(F.folder_tiff(tmp_path / "tiff")[0])
    assert any("read with tifffile" in n and "case000.tif" in n for n in tiff.notes)
    grey = check_dataset(F.folder_grey(tmp_path / "grey")[0])
    assert any("three equal channels" in n for n in grey.notes)


def test_broken_copies_are_errors_naming_files(tmp_path, capsys):
    root, _ = F.folder_png(tmp_path / "broken", n=8, ubench=False)
    (root / "masks" / "case001.png").unlink()  # unmatched image
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "case002.png")  # wrong size
    (root / "masks" / "case003.png").write_bytes(b"not a png")  # unreadable
    shutil.copy(root / "images" / "case004.png", root / "images" / "case005.png")  # same image twice
    shutil.copy(root / "masks" / "case004.png", root / "masks" / "case005.png")
    Image.fromarray(np.zeros(F.SIZES[0], np.uint8)).save(root / "masks" / "case006.png")  # empty mask, its image's size
    report = check_dataset(root)
    text = "\n".join(report.lines())
    assert "case001.png" in text and "without a partner" in text
    assert "case002.png 10x10 vs image" in text
    assert "case003.png" in text and "not a readable image" in text
    assert "identical images" in text and "case004" in text and "case005" in text
    assert "empty mask" in text and "case006" in text
    assert main(["data", "check", str(root)]) == 2
    assert "error:" in capsys.readouterr().out


def test_swapped_folders_are_caught(tmp_path):
    root, _ = F.folder_png(tmp_path / "swap", n=6, ubench=False)
    (root / "images").rename(root / "tmp")
    (root / "masks").rename(root / "images")
    (root / "tmp").rename(root / "masks")
    report = check_dataset(root)
    assert any("swapped" in e for e in report.errors)


def test_a_test_image_in_training_data_is_an_error(tmp_path):
    root, _ = F.folder_multiclass(tmp_path / "leak", n=6, test=2)
    shutil.copy(root / "imagesTs" / "case006.png", root / "images" / "dup.png")
    shutil.copy(root / "labelsTs" / "case006.png", root / "masks" / "dup.png")
    report = check_dataset(root)
    assert any("identical images in test and training data" in e and "case006" in e for e in report.errors)


def test_cli_exit_status(tmp_path, capsys):
    root, _ = F.folder_bmp(tmp_path / "bmp")
    assert main(["data", "check", str(root)]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    root, _ = F.nnunet_3d(tmp_path / "Dataset003_X")
    assert main(["data", "check", str(root)]) == 0
    assert "scored per volume" in capsys.readouterr().out
    (root / "labelsTr" / "liver_001.nii.gz").unlink()
    assert main(["data", "check", str(root)]) == 2
    assert "liver_001_0000.nii.gz" in capsys.readouterr().out
