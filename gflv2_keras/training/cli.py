"""``gflv2 train``: run a training recipe (also ``python recipes/NAME.py``), or fine-tune a preset on your data.

Two forms (exactly one of ``--recipe`` / ``--preset``):
    gflv2 train --recipe NAME --data-root DIR        an official recipe on COCO-layout data
    gflv2 train --preset NAME|DIR --data PATH        fine-tune on COCO JSON, Pascal VOC or YOLO data
                [--val-data PATH] [--epochs N] [--batch-size B] [--image-size LONG SHORT]
                [--work-dir DIR] [--from-scratch]   (``recipes.finetune.finetune_recipe``)
"""

import argparse
import sys

from gflv2_keras.models.precision import PRECISIONS

EXIT_LOST_WORKER = 3  # distinct from a user's mistake (2): rerun every worker with --resume


def add_train_arguments(parser, with_recipe=True):
    """The options of ``gflv2 train`` (``with_recipe=False``: a recipe file's own command line)."""
    if with_recipe:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--recipe", help="recipe name (see `gflv2 recipes`) or path of a .py file defining RECIPE")
        which.add_argument("--preset", help="fine-tune this preset (name or folder) on --data (any layout)")
        parser.add_argument("--data", help="with --preset: training data: COCO JSON, Pascal VOC root or YOLO data.yaml")
        parser.add_argument("--val-data", help="with --preset: validation data (default: the 'val' split of a VOC / YOLO --data)")
        parser.add_argument("--image-size", type=int, nargs=2, metavar=("LONG", "SHORT"),
                            help="with --preset: keep-ratio training scale (default the preset's input_scale)")
        parser.add_argument("--from-scratch", action="store_true", help="with --preset: do not load the preset's weights")
    parser.add_argument("--data-root", help="dataset folder; COCO layout: annotations/instances_train2017.json, train2017/")
    parser.add_argument("--work-dir", help="output folder (default work_dirs/RECIPE)")
    parser.add_argument("--epochs", type=int, help="override the recipe's number of epochs")
    parser.add_argument("--batch-size", type=int, help="images per replica (override the recipe's batch_per_replica)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the work dir")
    parser.add_argument("--strategy", choices=("none", "mirrored", "multi-worker"), default="none")
    parser.add_argument("--cpu-devices", type=int, help="split the CPU into N logical devices (mirrored on CPU)")
    parser.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="float32",
                        help="float32 (official) or mixed precision (float16 with dynamic loss scaling)")
    parser.add_argument("--accumulate", type=int, default=1, metavar="N",
                        help="micro-batches per update: global batch = replicas x batch size x N (mean gradient)")
    parser.add_argument("--steps-per-epoch", type=int, help="cap the steps of an epoch (quick runs)")
    parser.add_argument("--train-annotations", help="training annotation file (overrides the recipe path)")
    parser.add_argument("--train-images", help="training image folder (COCO / VOC; with --preset: of --data)")
    parser.add_argument("--val-annotations", help="validation annotation file")
    parser.add_argument("--val-images", help="validation image folder (with --preset: of --val-data)")
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

    finetune = recipe is None and getattr(args, "preset", None) is not None
    if finetune:
        recipe = finetune_from_args(args)
    elif getattr(args, "data", None) or getattr(args, "val_data", None) or getattr(args, "image_size", None) \
            or getattr(args, "from_scratch", False):
        raise ValueError("--data, --val-data, --image-size and --from-scratch go with --preset, not --recipe")
    recipe = recipe if recipe is not None else load_recipe(args.recipe)
    if args.pretrained_backbone:
        recipe = validate_recipe({**recipe, "pretrained_backbone": args.pretrained_backbone}, "--pretrained-backbone")
    options = resolve_run(
        recipe,
        args.work_dir,
        data_root=args.data_root,
        strategy=args.strategy,
        resume=args.resume,
        epochs=None if finetune else args.epochs,
        batch_per_replica=None if finetune else args.batch_size,
        cpu_devices=args.cpu_devices,
        jit_compile=args.jit_compile,
        train_annotations=args.train_annotations,
        train_images=None if finetune else args.train_images,
        val_annotations=args.val_annotations,
        val_images=None if finetune else args.val_images,
        steps_per_epoch=args.steps_per_epoch,
        evaluate=not args.no_eval,
        precision=args.precision,
        accumulate=args.accumulate,
    )
    trainer = Trainer(options)
    try:
        result = trainer.run()
    except Exception as error:  # a lost peer of a multi-worker run: one line, not TensorFlow's report
        from gflv2_keras.training.strategy import lost_worker_message

        message = lost_worker_message(error, options.work_dir) if args.strategy == "multi-worker" else None
        if message is None:
            raise
        print(f"gflv2 train: error: {message}", file=sys.stderr)
        return EXIT_LOST_WORKER
    speed = result["images_per_second"]
    print(
        f"[train] done: {result['iterations']} iterations, "
        + (f"{speed:.2f} images/s, " if speed else "")
        + f"work dir {result['work_dir']}"
    )
    if result["preset_dir"]:
        print(f"[train] predict: gflv2 predict IMAGES... --preset {result['preset_dir']}; "
              f"export: gflv2 export --preset {result['preset_dir']} --output DIR")
    return 0


def finetune_from_args(args):
    """The ``finetune_recipe`` of ``gflv2 train --preset``; COCO-recipe-only options are refused."""
    from gflv2_keras.recipes.finetune import finetune_recipe

    if not args.data:
        raise ValueError("--preset needs --data PATH (COCO JSON, Pascal VOC root or YOLO data.yaml)")
    recipe_only = [f"--{name.replace('_', '-')}" for name in ("data_root", "train_annotations", "val_annotations")
                   if getattr(args, name)]
    if recipe_only:
        raise ValueError(f"{', '.join(recipe_only)} go with --recipe; with --preset give --data / --val-data")
    return finetune_recipe(
        args.preset,
        args.data,
        val_data=args.val_data,
        epochs=args.epochs if args.epochs is not None else 12,
        batch_size=args.batch_size,
        image_size=args.image_size,
        from_scratch=args.from_scratch,
        images=args.train_images,
        val_images=args.val_images,
    )


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
