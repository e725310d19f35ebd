"""Classes matched by name (``data.class_map``): label maps, the training order, relabelling a loaded
dataset, and the readers honouring a given class order by name in every layout."""

import numpy as np
import pytest

from gflv2_keras.data.class_map import (
    label_map,
    match_detector_classes,
    training_class_names,
)
from gflv2_keras.data.formats import load_detection_dataset

from three_layouts import write_three_layouts



@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """One small split as COCO (sparse ids), VOC (sorted names) and YOLO (names written in a third order)."""
    return write_three_layouts(tmp_path_factory.mktemp("class_map"), num_val=4, seed=5, image_size=(64, 80),
                               object_size=(12, 30))


def _load(split, kind, class_names=None):
    return load_detection_dataset(split[kind], "val", images=split["images"] if kind == "coco" else None,
                                  class_names=class_names, for_training=False, verbose=False)


def _named_objects(dataset):
    """Per image (in file order), the sorted (class name, rounded box) pairs: what a class index must mean."""
    return [sorted((dataset.class_names[int(label)], tuple(np.round(box, 2)))
                   for box, label in zip(r["boxes"], r["labels"])) for r in dataset.records]


def test_the_three_layouts_number_the_classes_differently(split):
    orders = {kind: _load(split, kind).class_names for kind in ("coco", "voc", "yolo")}
    assert orders == {"coco": ["star", "cross", "triangle"], "voc": ["cross", "star", "triangle"],
                      "yolo": ["triangle", "star", "cross"]}


@pytest.mark.parametrize("kind", ["coco", "voc", "yolo"])
def test_every_reader_honours_a_given_class_order_by_name(split, kind):
    reference = _named_objects(_load(split, "coco"))
    order = ["cross", "triangle", "star"]  # none of the layouts' own orders
    dataset = _load(split, kind, class_names=order)
    assert dataset.class_names == order
    assert _named_objects(dataset) == reference  # each box keeps its name, whatever index it has now
    if kind == "coco":  # label i is still category_ids[i]: the file's own id of that name
        assert dataset.category_ids == [12, 30, 4]


def test_a_split_may_lack_a_class_and_gets_an_unused_id_for_it(split):
    dataset = _load(split, "coco", class_names=["ellipse", "star", "cross", "triangle"])
    assert dataset.class_names == ["ellipse", "star", "cross", "triangle"]
    assert dataset.category_ids == [31, 4, 12, 30]  # the file's ids kept, a fresh one after the largest
    assert _named_objects(dataset) == _named_objects(_load(split, "coco"))
    voc = _load(split, "voc", class_names=["ellipse", "star", "cross", "triangle"])
    assert voc.category_ids == [0, 1, 2, 3] and _named_objects(voc) == _named_objects(_load(split, "coco"))


@pytest.mark.parametrize("kind", ["coco", "yolo"])
def test_a_class_missing_from_the_given_names_is_one_error_listing_it(split, kind):
    with pytest.raises(ValueError, match=r"differ from the class_names given .*\['triangle'\] are not among them"):
        _load(split, kind, class_names=["cross", "star", "ellipse"])


def test_the_training_order_is_the_preset_s_where_it_has_the_data_s_names():
    preset = ["rectangle", "ellipse", "triangle"]
    assert training_class_names(["triangle", "rectangle", "ellipse"], preset) == preset  # same set: as it is
    assert training_class_names(["triangle", "rectangle"], preset) == ["rectangle", "triangle"]  # a subset
    assert training_class_names(["star", "triangle", "cross"], preset) == ["triangle", "star", "cross"]  # new ones
    assert training_class_names(["star", "cross"], None) == ["star", "cross"]  # a preset without names
    with pytest.raises(ValueError, match=r"the training data: class names \['a'\] appear more than once"):
        training_class_names(["a", "b", "a"], preset)


def test_label_map_sends_each_name_to_its_index_or_minus_one():
    np.testing.assert_array_equal(label_map(["b", "x", "a"], ["a", "b", "c"]), [1, -1, 0])


class _Detector:
    def __init__(self, class_names=None, num_classes=None):
        self.class_names, self.num_classes = class_names, num_classes


def test_a_detector_is_matched_to_the_data_by_name(split):
    dataset = _load(split, "voc")  # cross, star, triangle
    match = match_detector_classes(_Detector(["triangle", "ellipse", "cross", "star"], 4), dataset)
    np.testing.assert_array_equal(match.to_dataset, [2, -1, 0, 1])
    assert match.by_name and match.unscored == ["ellipse"]
    assert any("['ellipse'] are not in the data" in line for line in match.notes())


def test_a_data_class_the_detector_lacks_is_one_error_listing_it(split):
    dataset = _load(split, "yolo")
    with pytest.raises(ValueError, match=r"data.yaml: classes \['triangle'\] are not classes of the detector"):
        match_detector_classes(_Detector(["star", "cross"], 2), dataset)


def test_a_detector_without_names_is_matched_by_position_when_the_counts_agree(split):
    dataset = _load(split, "coco")
    match = match_detector_classes(_Detector(None, 3), dataset)
    np.testing.assert_array_equal(match.to_dataset, [0, 1, 2])
    assert not match.by_name and "by position" in match.notes()[0]
    with pytest.raises(ValueError, match=r"the data has 3 classes .* the detector 5 classes and no class names"):
        match_detector_classes(_Detector(None, 5), dataset)
    assert match_detector_classes(object(), dataset).to_dataset is None  # nothing known: the data's indices
