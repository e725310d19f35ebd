"""One small validation split written in the three layouts, each numbering the classes differently.

COCO keeps sparse category ids (30, 4, 12: COCO order star, cross, triangle), Pascal VOC sorts the
names, YOLO writes them in ``YOLO_ORDER``: what a class index means differs in each, the names do not.
"""

from gflv2_keras.data.class_map import reorder_classes
from gflv2_keras.data.coco import load_coco
from gflv2_keras.data.layouts import write_voc, write_yolo
from gflv2_keras.data.synthetic import make_synthetic_coco

CLASSES, SPARSE_IDS = ["triangle", "star", "cross"], [30, 4, 12]  # COCO order: star (4), cross (12), triangle (30)
YOLO_ORDER = ["triangle", "star", "cross"]


def write_three_layouts(root, num_val, seed, image_size, object_size):
    """Writes the split under ``root`` (``coco/``, ``voc/``, ``yolo/``) and returns its paths:
    ``coco`` (the val annotation JSON), ``images`` (its image folder), ``voc`` (folder), ``yolo`` (data.yaml)."""
    coco = make_synthetic_coco(str(root / "coco"), num_train=1, num_val=num_val, seed=seed, image_size=image_size,
                               object_size=object_size, max_objects=4, classes=CLASSES, category_ids=SPARSE_IDS)  # fmt: skip
    dataset = load_coco(coco["val_annotations"], coco["val_images"], for_training=False, verbose=False)
    write_voc(dataset, str(root / "voc"), split="val")
    yolo = write_yolo(reorder_classes(dataset, YOLO_ORDER), str(root / "yolo"), split="val")
    return {"coco": coco["val_annotations"], "images": coco["val_images"], "voc": str(root / "voc"), "yolo": yolo}
