"""Datasets declared, not coded: every file format and quirk users bring, read as the drawing says.

Expected masks come from the generator's own drawing (``user_formats``), never from vmbench's
decoders; the nnU-Net folds from the ``splits_final.json`` the test writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import vmbench
from vmbench.config import ExperimentConfig
from vmbench.data import dataset_for
from vmbench.data.folder import ClassMap
from vmbench.data.imagefiles import load_image, load_mask
from vmbench.data.user import declare_path
from vmbench.errors import DataError

sys.path.insert(0, str(Path(__file__).parent))
import user_formats as F  # noqa: E402

BINARY = [F.folder_png, F.folder_jpeg, F.folder_bmp, F.folder_tiff, F.folder_grey]


def config_for(root: Path, name: str, **options) -> ExperimentConfig:
    overrides = declare_path(root, labels=options.pop("labels", None), name=name)
    overrides.update({f"data.options.{k}": v for k, v in options.items()})
    return ExperimentConfig().with_overrides({**overrides, "data.img_size": 64})


def all_cases(cfg):
    return [d for split in ("train", "val", "test") for d in [dataset_for(cfg, split, augment=False)]]


@pytest.mark.parametrize("writer", BINARY, ids=lambda w: w.__name__)
def test_binary_formats_load_as_drawn(tmp_path, writer):
    root, truth = writer(tmp_path / writer.__name__)
    cfg = config_for(root, f"t-{writer.__name__}")
    info = vmbench.dataset_info(cfg.data.name)
    assert (info.task, info.num_classes, info.evaluation) == ("binary", 1, "pooled2d")
    seen = set()
    for data in all_cases(cfg):
        for i, case in enumerate(data.ids):
            seen.add(case)
            native = data.native_mask(i)
            assert data.native_size(i) == truth[case].shape
            if writer is F.folder_jpeg:  # lossy: compression may move a pixel or two at the edges
                assert np.mean(native == truth[case]) > 0.995
            else:
                np.testing.assert_array_equal(native, truth[case])
        item = data[0]
        assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
        assert set(np.unique(item["mask"].numpy())) <= {0.0, 1.0}
    assert seen == set(truth)  # every pair in exactly one split
    assert sum(len(d) for d in all_cases(cfg)) == len(truth)


def test_minisblack_rgb_tiff_is_read_with_tifffile(tmp_path):
    root, _ = F.folder_tiff(tmp_path / "tiff")
    path = root / "images" / "case000.tif"
    with pytest.raises(Exception, match="cannot identify"):  # the released frames' Pillow failure
        Image.open(path).load()
    import tifffile

    np.testing.assert_array_equal(load_image(path), tifffile.imread(path))


def test_multiclass_png_with_test_folder(tmp_path):
    root, truth = F.folder_multiclass(tmp_path / "mc")
    cfg = config_for(root, "t-multiclass")
    info = vmbench.dataset_info(cfg.data.name)
    assert (info.task, info.num_classes, info.evaluation) == ("multiclass", 3, "multiclass2d")
    assert info.test_metrics() == ("dsc", "dsc_class1", "dsc_class2")
    test = dataset_for(cfg, "test")
    assert sorted(test.ids) == sorted(p.stem for p in (root / "imagesTs").iterdir())
    for i, case in enumerate(test.ids):
        np.testing.assert_array_equal(test.native_mask(i), truth[case])
    item = test[0]
    assert item["mask"].dtype == np.int64 or str(item["mask"].dtype) == "torch.int64"
    assert item["mask"].shape == (64, 64)


def test_labels_map_values_to_named_classes(tmp_path):
    root, truth = F.folder_multiclass(tmp_path / "mcv", values=(0, 100, 200), test=0)
    with pytest.raises(DataError, match="neither"):  # {0, 100, 200}: not guessed
        declare_path(root, name="t-mcv-guess")
    cfg = config_for(root, "t-mcv", labels={"background": 0, "polyp": 100, "core": 200})
    assert vmbench.dataset_info("t-mcv").class_names == ("background", "polyp", "core")
    data = dataset_for(cfg, "train")
    for i, case in enumerate(data.ids):
        np.testing.assert_array_equal(data.native_mask(i), truth[case])


def test_palette_masks_are_their_indices(tmp_path):
    root, truth = F.folder_multiclass(tmp_path / "pal", palette=True, test=0)
    data = dataset_for(config_for(root, "t-palette"), "train")
    for i, case in enumerate(data.ids):
        np.testing.assert_array_equal(data.native_mask(i), truth[case])


def test_nnunet_2d_respects_splits_final(tmp_path):
    root, truth = F.nnunet_2d(tmp_path / "Dataset120_Road")
    folds = json.loads((root / "splits_final.json").read_text())
    cfg = config_for(root, "t-nnunet")
    assert vmbench.dataset_info("t-nnunet").class_names == ("background", "road", "lane")
    assert dataset_for(cfg, "val").ids == sorted(folds[0]["val"])
    assert dataset_for(cfg, "test").ids == sorted(p.stem for p in (root / "labelsTs").iterdir())
    cv = cfg.with_overrides({"data.protocol": "cv", "data.fold": 2})
    assert dataset_for(cv, "val").ids == sorted(folds[2]["val"])
    assert dataset_for(cv, "train").ids == sorted(folds[2]["train"])
    data = dataset_for(cfg, "train")
    for i, case in enumerate(data.ids):
        np.testing.assert_array_equal(data.native_mask(i), truth[case])


def test_nnunet_3d_trains_on_slices_and_scores_volumes(tmp_path):
    root, truth = F.nnunet_3d(tmp_path / "Dataset002_Liver")
    cfg = config_for(root, "t-3d")
    info = vmbench.dataset_info("t-3d")
    assert (info.task, info.num_classes, info.in_chans, info.evaluation) == ("multiclass", 3, 1, "volume")
    assert info.class_names == ("background", "liver", "tumour")
    train, val, test = (dataset_for(cfg, s) for s in ("train", "val", "test"))
    cases = {i.rsplit("_slice", 1)[0] for i in train.ids}
    assert len(train) == sum(truth[c].shape[0] for c in cases)  # every slice of every training volume
    item = train[0]
    assert item["image"].shape == (1, 64, 64) and item["mask"].shape == (64, 64)
    assert test.is_volume and test.ids == ["liver_005"] and not set(val.ids) & cases
    for data in (val, test):
        for i, case in enumerate(data.ids):
            volume = data[i]
            np.testing.assert_array_equal(volume["label"], truth[case])
            assert volume["image"].shape == truth[case].shape and volume["spacing"] == pytest.approx((2.5, 0.8, 0.8))
            assert 0.0 <= volume["image"].min() and volume["image"].max() <= 1.0


def test_other_volume_formats_are_refused_in_one_line(tmp_path):
    root = tmp_path / "Dataset004_Mha"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": {"background": 0, "x": 1},
                                                   "numTraining": 1, "file_ending": ".mha"}))
    with pytest.raises(DataError) as err:
        declare_path(root, name="t-mha")
    assert "NIfTI (.nii.gz, .nii) only" in str(err.value) and "\n" not in str(err.value)


def test_holdout_split_is_seeded_and_disjoint(tmp_path):
    root, truth = F.folder_png(tmp_path / "hold", n=20)

    def parts(name: str, seed: int) -> list[list[str]]:
        cfg = config_for(root, name, split_seed=seed)
        return [dataset_for(cfg, split).ids for split in ("train", "val", "test")]

    first, again, other = parts("t-hold", 0), parts("t-hold", 0), parts("t-hold", 1)
    assert [len(p) for p in first] == [14, 2, 4]  # 70/10/20 of 20
    assert sorted(sum(first, [])) == sorted(truth)  # disjoint and complete
    assert again == first and other[2] != first[2]


def test_user_names_never_take_a_registered_name(tmp_path):
    root, _ = F.folder_png(tmp_path / "clash", n=4)
    with pytest.raises(DataError, match="taken"):
        ExperimentConfig().with_overrides(declare_path(root, name="isic2018"))
    config_for(root, "t-clash")
    other, _ = F.folder_png(tmp_path / "other", n=4)
    with pytest.raises(DataError, match="declared twice"):
        config_for(other, "t-clash")


def test_declaration_travels_in_the_configuration(tmp_path):
    """A Ray worker is a fresh process that rebuilds the configuration from a dict."""
    root, _ = F.folder_png(tmp_path / "travel", n=5)
    cfg = config_for(root, "t-travel")
    code = ("import json, sys, vmbench; from vmbench.config import ExperimentConfig; from vmbench.data import dataset_for;"
            "cfg = ExperimentConfig.from_dict(json.loads(sys.argv[1])); info = vmbench.dataset_info(cfg.data.name);"
            "print(info.name, info.task, len(dataset_for(cfg, 'train')))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cfg.to_dict())], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["t-travel", "binary", str(len(dataset_for(cfg, "train")))]


@pytest.mark.parametrize("colours, message", [
    ([(255, 0, 0), (0, 255, 0)], "channels differ"),
])
def test_ambiguous_masks_are_refused_naming_the_file(tmp_path, colours, message):
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[:4] = colours[0]
    pixels[4:] = colours[1]
    path = tmp_path / "m.png"
    Image.fromarray(pixels).save(path)
    with pytest.raises(DataError, match=message) as err:
        load_mask(path)
    assert str(path) in str(err.value)


def test_alpha_masks(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 7
    rgba[2:5, 2:5, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    values, how = load_mask(tmp_path / "alpha.png")
    assert how == "alpha" and np.array_equal(values, rgba[..., 3])
    rgba[0, 0, :3] = 200  # colour varies too: which is the mask?
    Image.fromarray(rgba, "RGBA").save(tmp_path / "both.png")
    with pytest.raises(DataError, match="ambiguous"):
        load_mask(tmp_path / "both.png")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.sets(st.integers(0, 255), min_size=1, max_size=6), sixteen=st.booleans())
def test_mask_values_round_trip_and_classes(tmp_path, values, sixteen):
    values = sorted(values | {0})
    rng = np.random.default_rng(len(values))
    scale = 257 if sixteen else 1
    pixels = (np.asarray(values)[rng.integers(0, len(values), (9, 11))] * scale).astype(np.uint16 if sixteen else np.uint8)
    path = tmp_path / "mask.png"
    Image.fromarray(pixels).save(path)
    decoded, _ = load_mask(path)
    np.testing.assert_array_equal(decoded, pixels)
    found = set(int(v) for v in np.unique(pixels))
    if len(found | {0}) <= 2:
        assert ClassMap.from_values(found, "m").binary
    elif sorted(found) == list(range(len(found))):
        assert ClassMap.from_values(found, "m").num_classes == len(found)
    else:
        with pytest.raises(DataError, match="labels"):
            ClassMap.from_values(found, "m")


def test_labels_field_errors_name_the_field():
    for bad, match in (({"bg": 1, "x": 2}, "background"), ({"bg": 0, "x": [1, 2]}, "region"), ([0, 1], "mapping")):
        with pytest.raises(DataError, match=match) as err:
            ClassMap.from_option(bad, "data.options.labels")
        assert str(err.value).startswith("data.options.labels")


def test_search_space_declares_datasets_that_travel_in_each_study(tmp_path):
    from vmbench.search_space import parse_spec

    root, _ = F.folder_png(tmp_path / "spaces" / "polyp-data", n=6)
    raw = {"models": ["unet"], "metric": "val_dsc", "budget": {"trials": 1, "max_epochs": 1},
           "datasets": [{"name": "t-polyps", "path": "polyp-data", "format": "folder",
                         "labels": {"background": 0, "polyp": 255}}]}
    space_file = tmp_path / "spaces" / "space.yaml"
    spec = parse_spec(raw, source="space.yaml", space_file=space_file)
    assert spec.datasets == ["t-polyps"] and len(spec.studies) == 1
    for study in spec.studies:
        data = study.base.data
        assert (data.name, data.root, data.options["format"]) == ("t-polyps", str(root.resolve()), "folder")
        assert data.options["labels"] == {"background": 0, "polyp": 255}
    assert vmbench.dataset_info("t-polyps").class_names == ("polyp",)
    bad = {**raw, "datasets": [{"name": "t-bad", "path": "nowhere"}]}
    with pytest.raises(Exception, match=r"datasets\[0\]\.path") as err:
        parse_spec(bad, source="space.yaml", space_file=space_file)
    assert "\n" not in str(err.value)


def test_splits_final_without_a_test_folder_never_leaks_test_cases(tmp_path):
    root, truth = F.nnunet_2d(tmp_path / "Dataset121_Road", test=0)
    cfg = config_for(root, "t-nnunet-notest")
    train, val, test = (set(dataset_for(cfg, s).ids) for s in ("train", "val", "test"))
    folds = json.loads((root / "splits_final.json").read_text())
    assert test and not test & (train | val)
    assert val == set(folds[0]["val"]) - test and train == set(folds[0]["train"]) - test


def test_plugin_contract_is_checked_at_registration_and_build():
    from vmbench.data import _check_contract
    from vmbench.registry import register_dataset

    good = dict(task="binary", num_classes=1, in_chans=3, img_size=(64, 64), evaluation="pooled2d")
    for change, match in (({"task": "segmentation"}, "task"), ({"num_classes": 2}, "binary task"),
                          ({"img_size": 64}, "img_size"), ({"evaluation": "pooled3d"}, "evaluation kind"),
                          ({"task": "multiclass", "num_classes": 3, "class_names": ("a", "b")}, "class_names")):
        with pytest.raises(Exception, match=match):
            register_dataset("t-plugin", **{**good, **change})
    assert "t-plugin" not in vmbench.list_datasets()  # nothing registered on refusal

    class NoName:  # the plug-in of the issue: AttributeError 'transform', then 'name'
        split, protocol, is_volume = "train", "holdout", False

        def __len__(self):
            return 0

        def __getitem__(self, index):
            raise IndexError(index)

    with pytest.raises(DataError, match="without name, set_epoch") as err:
        _check_contract("t-plugin", NoName())
    assert "\n" not in str(err.value)
