"""``gflv2 recipes``: list the named training recipes."""

from gflv2_keras.recipes.catalog import RECIPES, list_recipes


def register(subparsers):
    parser = subparsers.add_parser(
        "recipes",
        description="List the named training recipes (gflv2 train --recipe NAME): the preset each trains, its "
        "epochs and the official config it reproduces.",
    )
    parser.set_defaults(func=run)


def run(args):
    del args
    print(f"{'recipe':38s} {'preset':38s} {'epochs':>6s}  official config")
    for name in list_recipes():
        recipe = RECIPES[name]
        print(f"{name:38s} {recipe['preset']:38s} {recipe['epochs']:>6d}  {recipe['official_config'] or '-'}")
    print("Train one: gflv2 train --recipe NAME --data-root DIR (python recipes/NAME.py in a source checkout)")
    return 0
