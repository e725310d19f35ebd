"""Training recipes as data: what a recipe holds (``base``) and the named recipes (``catalog``)."""

from gflv2_keras.recipes.base import RECIPE_FIELDS, SCHEDULES, SYNTHETIC_DATA, coco_recipe, validate_recipe
from gflv2_keras.recipes.catalog import RECIPES, get_recipe, list_recipes, load_recipe
from gflv2_keras.recipes.finetune import finetune_recipe

__all__ = [
    "RECIPES",
    "RECIPE_FIELDS",
    "SCHEDULES",
    "SYNTHETIC_DATA",
    "coco_recipe",
    "finetune_recipe",
    "get_recipe",
    "list_recipes",
    "load_recipe",
    "validate_recipe",
]
