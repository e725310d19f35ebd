"""gflv2_r50_fpn_1x_coco: the official configs/gfocal/gfocal_r50_fpn_1x.py (1x schedule).

Run: ``gflv2 train --recipe gflv2_r50_fpn_1x_coco --data-root COCO_ROOT``
or ``python recipes/gflv2_r50_fpn_1x_coco.py --data-root COCO_ROOT``.
"""

from gflv2_keras.recipes import get_recipe
from gflv2_keras.training.cli import run_recipe_cli

RECIPE = get_recipe("gflv2_r50_fpn_1x_coco")  # defined in gflv2_keras/recipes/catalog.py, shipped with the package

if __name__ == "__main__":
    run_recipe_cli(RECIPE)
