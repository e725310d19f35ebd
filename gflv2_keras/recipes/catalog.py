"""The named recipes: one per row of the official model table, plus the CPU demo.

They ship inside the package, so ``gflv2 train --recipe NAME`` works from any install; the
repository's ``recipes/NAME.py`` files are runnable entry points over these same dicts. A
user's own recipe is a ``.py`` file defining ``RECIPE`` (``load_recipe("my_recipe.py")``).
"""

import copy
import importlib.util
from pathlib import Path

from gflv2_keras.recipes.base import SYNTHETIC_DATA, coco_recipe, validate_recipe

RECIPES = {
    recipe["name"]: recipe
    for recipe in (
        coco_recipe("gflv2_r50_fpn_1x_coco", schedule="1x"),
        coco_recipe("gflv2_r50_fpn_ms2x_coco", schedule="ms2x"),
        coco_recipe("gflv2_r101_fpn_ms2x_coco", schedule="ms2x"),
        coco_recipe("gflv2_r101_dcn_fpn_ms2x_coco", schedule="ms2x"),
        coco_recipe("gflv2_x101_32x4d_dcn_fpn_ms2x_coco", schedule="ms2x"),
        coco_recipe("gflv2_r2_101_dcn_fpn_ms2x_coco", schedule="ms2x"),
        # The official recipe's machinery (SGD + coupled L2, linear warm-up, step decay, flip) at CPU
        # scale: a higher learning rate for a from-scratch network, a short warm-up and 12 short
        # epochs. Data: ``gflv2 demo`` writes it (``DATA/annotations/{train,val}.json``, ``DATA/{train,val}/``).
        coco_recipe(
            "gflv2_tiny_r18_demo",
            epochs=12,
            lr_steps=[9, 11],
            base_lr_per_16=0.06,  # 0.03 at batch 8: from-scratch tiny nets like a higher lr (official: 0.01)
            batch_per_replica=8,
            scale=[256, 256],
            warmup_iters=100,
            checkpoint_every_steps=50,
            eval_every_epochs=1,
            **SYNTHETIC_DATA,
            notes="CPU demo: from scratch (no pretrained backbone), lr 0.06 per 16 images, 12 epochs of 600 images.",
        ),
    )
}


def list_recipes():
    """Names of the named recipes."""
    return sorted(RECIPES)


def get_recipe(name):
    """A copy of the named recipe; ``ValueError`` listing the names for an unknown one."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}. Available recipes: {', '.join(list_recipes())}")
    return copy.deepcopy(RECIPES[name])


def load_recipe(name_or_path):
    """A validated recipe by name, or from a ``.py`` file that defines a ``RECIPE`` dict."""
    if str(name_or_path) in RECIPES:
        return get_recipe(str(name_or_path))
    path = Path(name_or_path)
    if not str(name_or_path).endswith(".py") and not path.is_file():
        return get_recipe(str(name_or_path))  # raises, listing the names
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"gflv2_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "RECIPE", None), dict):
        raise ValueError(f"{path}: defines no RECIPE dict")
    return validate_recipe(copy.deepcopy(module.RECIPE), source=str(path))
