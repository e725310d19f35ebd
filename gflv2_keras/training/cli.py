"""``gflv2 train``: run a training recipe (also ``python recipes/NAME.py``)."""

import argparse
import sys


def add_train_arguments(parser, with_recipe=True):
    """The options of ``gflv2 train`` (``with_recipe=False``: a recipe file's own command line)."""
    if with_recipe:
        parser.add_argument("--recipe", required=True, help="recipe name (see `gflv2 recipes`) or path of a .py file defining RECIPE")
    parser.add_argument("--data-root", help="dataset folder; COCO layout: annotations/instances_train2017.json, train2017/")
    parser.add_argument("--work-dir", help="output folder (default work_dirs/RECIPE)")
    parser.add_argument("--epochs", type=int, help="override the recipe's number of epochs")
    parser.add_argument("--batch-size", type=int, help="images per replica (override the recipe's batch_per_replica)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the work dir")
    parser.add_argument("--strategy", choices=("none", "mirrored", "multi-worker"), default="none")
    parser.add_argument("--cpu-devices", type=int, help="split the CPU into N logical devices (mirrored on CPU)")
    parser.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")
    parser.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="float32 (official) or mixed precision (float16 with dynamic loss scaling)")
    parser.add_argument("--accumulate", type=int, default=1, metavar="N",
                        help="micro-batches per update: global batch = replicas x batch size x N (mean gradient)")
    parser.add_argument("--steps-per-epoch", type=int, help="cap the steps of an epoch (quick runs)")
    parser.add_argument("--train-annotations", help="training annotation file (overrides the recipe path)")
    parser.add_argument("--train-images", help="training image folder")
    parser.add_argument("--val-annotations", help="validation annotation file")
    parser.add_argument("--val-images", help="validation image folder")
    parser.add_argument("--no-eval", action="store_true", help="skip the COCO evaluation callback")
    parser.add_argument("--pretrained-backbone", metavar="FILE.pth",
                        help="ImageNet weights for the backbone (e.g. torchvision resnet50 .pth); needs PyTorch")
    return parser


def build_train_parser(prog="gflv2 train", with_recipe=True):
    parser = argparse.ArgumentParser(prog=prog, description="Train a GFLv2 detector with a recipe.")
    return add_train_arguments(parser, with_recipe)


def run_train(args, recipe=None):
    """Runs the trainer from parsed arguments; returns the exit code.

    A wrong option or missing data raises before anything is built (``options.resolve_run``),
    which the ``gflv2`` entry point reports in one line with exit code 2; then the stages run
    as in ``trainer.train``.
    """
    from gflv2_keras.recipes import load_recipe, validate_recipe
    from gflv2_keras.training.options import resolve_run
    from gflv2_keras.training.trainer import Trainer

    recipe = recipe if recipe is not None else load_recipe(args.recipe)
    if args.pretrained_backbone:
        recipe = validate_recipe({**recipe, "pretrained_backbone": args.pretrained_backbone}, "--pretrained-backbone")
    options = resolve_run(
        recipe,
        args.work_dir,
        data_root=args.data_root,
        strategy=args.strategy,
        resume=args.resume,
        epochs=args.epochs,
        batch_per_replica=args.batch_size,
        cpu_devices=args.cpu_devices,
        jit_compile=args.jit_compile,
        train_annotations=args.train_annotations,
        train_images=args.train_images,
        val_annotations=args.val_annotations,
        val_images=args.val_images,
        steps_per_epoch=args.steps_per_epoch,
        evaluate=not args.no_eval,
        precision=args.precision,
        accumulate=args.accumulate,
    )
    result = Trainer(options).run()
    speed = result["images_per_second"]
    print(
        f"[train] done: {result['iterations']} iterations, "
        + (f"{speed:.2f} images/s, " if speed else "")
        + f"work dir {result['work_dir']}"
    )
    return 0


def run_recipe_cli(recipe, argv=None):
    """``python recipes/NAME.py --data-root DIR [...]``: the ``gflv2 train`` options for one recipe."""
    from gflv2_keras.utils.cli import run_command, split_verbose

    argv, verbose = split_verbose(sys.argv[1:] if argv is None else argv)
    parser = build_train_parser(prog=f"python recipes/{recipe['name']}.py", with_recipe=False)
    args = parser.parse_args(argv)
    sys.exit(run_command("train", lambda: run_train(args, recipe=recipe), verbose))


def register(subparsers):
    parser = subparsers.add_parser("train", description=__doc__)
    add_train_arguments(parser)
    parser.set_defaults(func=run_train)
