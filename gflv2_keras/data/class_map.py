"""Classes matched by name: a dataset's class names (any order, any sparse category ids) onto a
detector's ``class_names``.

Every reader numbers its classes its own way (COCO: category ids ascending; Pascal VOC: sorted
object names; YOLO: the ``names`` keys), so a class index means nothing across datasets, or
between a dataset and a detector: only the names do. The same split written as COCO, VOC and
YOLO has three class orders; a detector must score the same on all three.

* Evaluation (``match_detector_classes``): each of the detector's class indices goes to the
  dataset's class of the same name. Detector classes the data lacks are not scored (their
  detections are dropped); data classes the detector lacks are one ``ValueError`` listing them.
  A detector without ``class_names`` is matched by position, which needs the same number of
  classes (else one ``ValueError``).
* Training (``training_class_names``): the run's class order. The preset's classes that the data
  has keep the preset's order; the data's other names follow in the data's order. With the
  same set of names that is the preset's order exactly (its classifier is used as it is);
  otherwise the classifier is resized and the rows of the names in both are kept, by name
  (``models.transfer.with_class_names``).
* ``reorder_classes`` relabels a loaded dataset to a given class order, in place (labels,
  ``category_ids``, ``class_names``), e.g. a validation split to its training split's order.

Names are compared exactly (case and spaces count); a list in which a name repeats cannot be
matched by name and is refused.
"""

import itertools

import numpy as np


class ClassMatch:
    """How a detector's class indices map onto a dataset's (``match_detector_classes``).

    Attributes:
        to_dataset: int64 ``[detector classes]``: the dataset class index of each detector class,
            -1 for a class the dataset does not have; ``None`` when the detector states neither
            names nor a class count (its labels are taken as the dataset's indices).
        by_name: whether the classes were matched by name (else by position).
        unscored: the detector's class names the dataset lacks (their detections are dropped).
    """

    def __init__(self, to_dataset, by_name, unscored=()):
        self.to_dataset = to_dataset
        self.by_name = by_name
        self.unscored = list(unscored)

    def notes(self, what="the preset"):
        """Lines for a user: the position fallback, and detector classes left unscored."""
        lines = []
        if not self.by_name and self.to_dataset is not None:
            lines.append(f"{what} has no class names: its {len(self.to_dataset)} classes are taken as the data's "
                         "by position (save it with class_names to match them by name)")
        if self.unscored:
            lines.append(f"{what}'s classes {self.unscored} are not in the data: their detections are not scored")
        return lines


def check_unique(names, where):
    """Raises ``ValueError`` naming the repeated names of ``names`` (``where``: whose list it is)."""
    seen, repeated = set(), []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    if repeated:
        raise ValueError(f"{where}: class names {repeated} appear more than once, so classes cannot be matched by name")


def label_map(from_names, to_names):
    """int64 ``[len(from_names)]``: the index in ``to_names`` of each of ``from_names``, -1 where absent."""
    index = {name: i for i, name in enumerate(to_names)}
    return np.array([index.get(name, -1) for name in from_names], np.int64)


def describe_difference(expected, found):
    """``"missing [...]; new [...]"``: the names of ``expected`` not in ``found``, and the reverse."""
    missing = [n for n in expected if n not in set(found)]
    new = [n for n in found if n not in set(expected)]
    return "; ".join(part for part in (f"missing {missing}" if missing else "", f"new {new}" if new else "") if part)


def match_detector_classes(detector, dataset):
    """Maps ``detector``'s class indices onto ``dataset``'s by name (see the module docstring).

    Args:
        detector: any object; its ``class_names`` (list or None) and ``num_classes`` are read
            when present.
        dataset: a ``DetectionDataset`` (``class_names``, ``annotation_file``).

    Returns:
        A ``ClassMatch``.

    Raises:
        ValueError: a dataset class the detector does not have (all of them listed), repeated
            names, or a detector without names whose class count differs from the dataset's.
    """
    names = getattr(detector, "class_names", None)
    count = getattr(detector, "num_classes", None)
    where = dataset.annotation_file
    if names is None:
        if count is None:
            return ClassMatch(None, by_name=False)
        if int(count) != dataset.num_classes:
            raise ValueError(
                f"{where}: the data has {dataset.num_classes} classes {list(dataset.class_names)}, the detector "
                f"{count} classes and no class names to match them by"
            )
        return ClassMatch(np.arange(dataset.num_classes, dtype=np.int64), by_name=False)
    names = [str(n) for n in names]
    check_unique(names, "the detector")
    check_unique(dataset.class_names, where)
    lacking = [n for n in dataset.class_names if n not in set(names)]
    if lacking:
        raise ValueError(
            f"{where}: classes {lacking} are not classes of the detector {names} (classes are matched by name)"
        )
    to_dataset = label_map(names, dataset.class_names)
    return ClassMatch(to_dataset, by_name=True, unscored=[n for n, i in zip(names, to_dataset) if i < 0])


def training_class_names(data_names, preset_names=None):
    """The class order of a training run on data named ``data_names`` from a preset named ``preset_names``.

    The preset's names that the data has, in the preset's order, then the data's other names in
    the data's order; the data's order when the preset has no names (``None``). The result is
    the data's set of names in every case; it equals ``preset_names`` when the sets are equal.
    """
    data_names = [str(n) for n in data_names]
    check_unique(data_names, "the training data")
    if preset_names is None:
        return data_names
    preset_names = [str(n) for n in preset_names]
    check_unique(preset_names, "the preset")
    shared = [n for n in preset_names if n in set(data_names)]
    return shared + [n for n in data_names if n not in set(shared)]


def reorder_classes(dataset, class_names):
    """Relabels ``dataset`` in place so that class index ``i`` is ``class_names[i]``; returns it.

    Every record's ``labels`` and ``ignore_labels`` follow their names; ``category_ids`` follow
    too (VOC: ``0..C-1`` again). ``class_names`` may hold names the dataset lacks (a validation
    split without some class): they get category ids unused by the dataset, after its largest.

    Raises:
        ValueError: a dataset class is not in ``class_names`` (listed; the message says that the
            dataset's classes differ from the ``class_names`` given), or names repeat.
    """
    class_names = [str(n) for n in class_names]
    check_unique(class_names, "the class_names given")
    check_unique(dataset.class_names, dataset.annotation_file)
    if list(dataset.class_names) == class_names:
        return dataset
    mapping = label_map(dataset.class_names, class_names)
    lacking = [n for n, i in zip(dataset.class_names, mapping) if i < 0]
    if lacking:
        raise ValueError(
            f"{dataset.annotation_file}: its classes {list(dataset.class_names)} differ from the class_names given "
            f"{class_names}: {lacking} are not among them (classes are matched by name)"
        )
    for record in dataset.records:
        for key in ("labels", "ignore_labels"):
            record[key] = mapping[np.asarray(record[key], np.int64)].astype(np.int32).reshape(-1)
    if dataset.format == "voc":
        category_ids = list(range(len(class_names)))
    else:
        old = dict(zip(dataset.class_names, (int(i) for i in dataset.category_ids)))
        fresh = itertools.count(max(old.values(), default=0) + 1)
        category_ids = [old[n] if n in old else next(fresh) for n in class_names]
    dataset.category_ids = category_ids
    dataset.class_names = class_names
    return dataset
