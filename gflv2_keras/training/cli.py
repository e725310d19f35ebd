"""``gflv2 train``: run a training recipe (also ``python recipes/NAME.py``), or fine-tune a preset on your data.

Two forms (exactly one of ``--recipe`` / ``--preset``):
    gflv2 train --recipe NAME --data-root DIR        an official recipe on COCO-layout data
    gflv2 train --preset NAME|DIR --data PATH        fine-tune on COCO JSON, Pascal VOC or YOLO data
                [--val-data PATH] [--epochs N] [--batch-size B] [--image-size H W]
                [--work-dir DIR] [--from-scratch]   (``recipes.finetune.finetune_recipe``)

``--seed N`` fixes the initial weights, the data order, scale and flip (the recipe's ``seed``,
0 by default): two runs with the same seed and options log the same losses. The options, and
a work dir that holds a run (without ``--resume``), are checked before TensorFlow loads
(``check_train_args``). When stdout is not a terminal (a log file, a pipe) each epoch is one
line, without the progress bar's control codes.
"""

import argparse
import os
import sys
from pathlib import Path

from gflv2_keras.models.precision import PRECISIONS
from gflv2_keras.training.work_dir import default_work_dir, refuse_used_work_dir
from gflv2_keras.utils.arguments import (
    add_image_size_argument,
    add_seed_argument,
    existing_dir,
    existing_path,
    positive_int,
)
from gflv2_keras.utils.cli import CommandLineParser, fit_verbosity

# The keep-ratio scale is order-free, as mmdet's img_scale (max() is the long edge, min() the short).
IMAGE_SIZE_HELP = (
    "with --preset: keep-ratio training scale (default the preset's input_scale); order-free like mmdet's "
    "img_scale: an image's long side is resized to at most max(H, W) and its short side to at most min(H, W), "
    "so 800 1333 and 1333 800 are the same"
)
# Options of the fine-tuning form and of the recipe form only (flag, attribute).
FINETUNE_ONLY = (("--data", "data"), ("--val-data", "val_data"), ("--image-size", "image_size"),
                 ("--from-scratch", "from_scratch"))  # fmt: skip
RECIPE_ONLY = (("--data-root", "data_root"), ("--train-annotations", "train_annotations"),
               ("--val-annotations", "val_annotations"))  # fmt: skip

EXIT_LOST_WORKER = 3  # distinct from a user's mistake (2): rerun every worker with --resume


def add_train_arguments(parser, with_recipe=True):
    """The options of ``gflv2 train`` (``with_recipe=False``: a recipe file's own command line)."""
    if with_recipe:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--recipe", help="recipe name (see `gflv2 recipes`) or path of a .py file defining RECIPE")
        which.add_argument("--preset", help="fine-tune this preset (name or folder) on --data (any layout)")
        parser.add_argument("--data", help="with --preset: training data: COCO JSON, Pascal VOC root or YOLO data.yaml")
        parser.add_argument("--val-data", help="with --preset: validation data (default: the 'val' split of a VOC / YOLO --data)")
        add_image_size_argument(parser, help=IMAGE_SIZE_HELP)
        parser.add_argument("--from-scratch", action="store_true", help="with --preset: do not load the preset's weights")
    parser.add_argument("--data-root", type=existing_dir,
                        help="dataset folder; COCO layout: annotations/instances_train2017.json, train2017/")
    parser.add_argument("--work-dir", help="output folder (default work_dirs/RECIPE)")
    parser.add_argument("--epochs", type=positive_int, help="override the recipe's number of epochs")
    parser.add_argument("--batch-size", type=positive_int,
                        help="images per replica (override the recipe's batch_per_replica)")
    add_seed_argument(parser, "seed of the initial weights, data order, scale and flip (default: the recipe's "
                      "seed, 0); the same seed repeats a run, --resume needs the seed of the run")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the work dir")
    parser.add_argument("--strategy", choices=("none", "mirrored", "multi-worker"), default="none",
                        help="tf.distribute strategy: none (one device, the default), mirrored (every GPU, or "
                        "--cpu-devices logical CPUs), multi-worker (the machines of TF_CONFIG)")
    parser.add_argument("--cpu-devices", type=positive_int,
                        help="split the CPU into N logical devices (mirrored on CPU)")
    parser.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="float32",
                        help="float32 (official) or mixed precision (float16 with dynamic loss scaling)")
    parser.add_argument("--accumulate", type=positive_int, default=1, metavar="N",
                        help="micro-batches per update: global batch = replicas x batch size x N (mean gradient)")
    parser.add_argument("--steps-per-epoch", type=positive_int, help="cap the steps of an epoch (quick runs)")
    parser.add_argument("--train-annotations", type=existing_path,
                        help="training annotation file (overrides the recipe path)")
    parser.add_argument("--train-images", type=existing_dir,
                        help="training image folder (COCO / VOC; with --preset: of --data)")
    parser.add_argument("--val-annotations", type=existing_path, help="validation annotation file")
    parser.add_argument("--val-images", type=existing_dir,
                        help="validation image folder (with --preset: of --val-data)")
    parser.add_argument("--no-eval", action="store_true", help="skip the COCO evaluation callback")
    parser.add_argument("--best-metric", choices=("AP", "AP50", "AP75", "APs", "APm", "APl"), default="AP",
                        help="held-out metric that picks WORK_DIR/preset, the best evaluated epoch (default AP); "
                        "WORK_DIR/last is the last epoch")
    parser.add_argument("--pretrained-backbone", metavar="FILE.pth", type=existing_path,
                        help="ImageNet weights for the backbone (e.g. torchvision resnet50 .pth); needs PyTorch")
    return parser


def build_train_parser(prog="gflv2 train", with_recipe=True):
    parser = CommandLineParser(prog=prog, description="Train a GFLv2 detector with a recipe.")
    return add_train_arguments(parser, with_recipe)


def check_train_args(args, recipe=None):
    """The checks of ``gflv2 train`` that need no TensorFlow, run before it loads (``precheck``).

    Values, paths and sizes are checked by argparse already (``utils.arguments``); here: the
    options of the other form, an unknown recipe or a broken recipe file, with ``--preset``
    (``check_finetune_args``) the preset and the layout of ``--data`` / ``--val-data``, and
    without ``--resume`` a work dir that holds a run (``train_work_dir``; checked again once
    the run holds the work dir's lock). ``recipe``: the recipe of ``python recipes/NAME.py``.
    """
    from gflv2_keras.recipes import load_recipe

    if getattr(args, "preset", None) is not None:
        check_finetune_args(args)
    else:
        given = [flag for flag, name in FINETUNE_ONLY if getattr(args, name, None)]
        if given:
            raise ValueError(f"{', '.join(given)} go with --preset, not --recipe")
        if recipe is None and getattr(args, "recipe", None) is not None:
            recipe = load_recipe(args.recipe)
    if not args.resume:
        refuse_used_work_dir(train_work_dir(args, recipe))


def train_work_dir(args, recipe=None):
    """The folder (absolute) a run of ``args`` writes: ``--work-dir``, else ``work_dirs/NAME``: the name of
    ``recipe`` (the loaded ``--recipe``), or with ``--preset`` (``recipe`` None) the fine-tuning
    recipe's, ``finetune_<dataset name>``."""
    from gflv2_keras.recipes.finetune import finetune_name

    if args.work_dir:
        return Path(args.work_dir).absolute()
    name = recipe["name"] if recipe is not None else finetune_name(args.data)
    return default_work_dir(name).absolute()


def check_finetune_args(args):
    """``gflv2 train --preset``: ``--data`` given and readable as a layout, the preset known, no recipe-only option."""
    from gflv2_keras.data.formats import detect_format
    from gflv2_keras.presets import PRESETS, list_presets

    if not args.data:
        raise ValueError("--preset needs --data PATH (COCO JSON, Pascal VOC root or YOLO data.yaml)")
    recipe_only = [flag for flag, name in RECIPE_ONLY if getattr(args, name)]
    if recipe_only:
        raise ValueError(f"{', '.join(recipe_only)} go with --recipe; with --preset give --data / --val-data")
    if args.preset not in PRESETS and not os.path.isdir(args.preset) and "://" not in args.preset:
        raise ValueError(f"--preset {args.preset}: neither a preset name ({', '.join(list_presets())}) nor a folder")
    for flag, path in (("--data", args.data), ("--val-data", args.val_data)):
        if path:
            try:
                detect_format(path)
            except ValueError as error:
                raise ValueError(f"{flag}: {error}") from None


def run_train(args, recipe=None):
    """Runs the trainer from parsed arguments (checked by ``check_train_args``); returns the exit code.

    A wrong option or missing data raises before anything is built (``options.resolve_run``),
    which the ``gflv2`` entry point reports in one line with exit code 2; then the stages run
    as in ``trainer.train``, ``fit`` with one line per epoch when stdout is not a terminal.
    """
    from gflv2_keras.recipes import load_recipe, validate_recipe
    from gflv2_keras.training.options import resolve_run
    from gflv2_keras.training.trainer import Trainer

    finetune = recipe is None and getattr(args, "preset", None) is not None
    if finetune:
        recipe = finetune_from_args(args)
    recipe = recipe if recipe is not None else load_recipe(args.recipe)
    if args.seed is not None:
        recipe = validate_recipe({**recipe, "seed": args.seed}, "--seed")
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
        best_metric=args.best_metric,
        verbose=fit_verbosity(),
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
    """The ``finetune_recipe`` of ``gflv2 train --preset`` (options checked by ``check_finetune_args``)."""
    from gflv2_keras.recipes.finetune import finetune_recipe

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
    args = recipe_parser(recipe).parse_args(argv)
    sys.exit(run_command("train", lambda: run_train(args, recipe=recipe), verbose, prog=recipe_prog(recipe),
                         check=lambda: check_train_args(args, recipe)))  # fmt: skip


def recipe_prog(recipe):
    return f"python recipes/{recipe['name']}.py"


def recipe_parser(recipe):
    """The command line of ``recipes/NAME.py``: ``gflv2 train``'s options without ``--recipe`` / ``--preset``."""
    return build_train_parser(prog=recipe_prog(recipe), with_recipe=False)


def register(subparsers):
    parser = subparsers.add_parser("train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    parser.set_defaults(func=run_train, precheck=check_train_args)
