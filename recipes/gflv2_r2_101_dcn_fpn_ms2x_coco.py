"""gflv2_r2_101_dcn_fpn_ms2x_coco: the official configs/gfocal/gfocal_r2n101_dcn_fpn_ms2x.py (ms2x schedule).

Run: ``gflv2 train --recipe gflv2_r2_101_dcn_fpn_ms2x_coco --data-root COCO_ROOT``
or ``python recipes/gflv2_r2_101_dcn_fpn_ms2x_coco.py --data-root COCO_ROOT``.
"""

from gflv2_keras.recipes import get_recipe
from gflv2_keras.training.cli import run_recipe_cli

RECIPE = get_recipe("gflv2_r2_101_dcn_fpn_ms2x_coco")  # defined in gflv2_keras/recipes/catalog.py, shipped with the package

if __name__ == "__main__":
    run_recipe_cli(RECIPE)
