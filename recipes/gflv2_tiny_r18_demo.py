"""gflv2_tiny_r18_demo: a tiny GFLv2 trained from scratch on the synthetic shapes (``gflv2 demo``).

The official recipe's machinery (SGD + coupled L2, linear warm-up, step decay, flip) at CPU
scale: a higher learning rate for a from-scratch network, a short warm-up and 12 short epochs (decay at 9 and 11).
Data: ``gflv2 demo`` writes it (``DATA/annotations/{train,val}.json``, ``DATA/{train,val}/``).
Run: ``gflv2 demo`` or ``gflv2 train --recipe gflv2_tiny_r18_demo --data-root DATA``.
"""

from gflv2_keras.recipes import get_recipe
from gflv2_keras.training.cli import run_recipe_cli

RECIPE = get_recipe("gflv2_tiny_r18_demo")  # defined in gflv2_keras/recipes/catalog.py, shipped with the package

if __name__ == "__main__":
    run_recipe_cli(RECIPE)
