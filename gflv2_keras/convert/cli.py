"""``gflv2 convert --checkpoint FILE.pth --preset NAME --output DIR``."""

import sys


def register(subparsers):
    parser = subparsers.add_parser(
        "convert",
        description=(
            "Convert an official GFocalV2 (MMDetection) .pth checkpoint into a preset folder that "
            "GFLV2Detector.from_preset(DIR) and every gflv2 command accept. The file is read without "
            "executing pickled code. Needs PyTorch: pip install 'gflv2-keras[convert]'."
        ),
    )
    parser.add_argument("--checkpoint", required=True, metavar="FILE.pth", help="official checkpoint file")
    parser.add_argument(
        "--preset", required=True, metavar="NAME", help="preset (architecture) of the checkpoint; see `gflv2 presets`"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="preset folder to write")
    parser.set_defaults(func=run)


def run(args):
    from gflv2_keras.convert.checkpoint import CheckpointReadError
    from gflv2_keras.convert.mapping import CheckpointMismatchError, convert_checkpoint

    try:
        convert_checkpoint(args.checkpoint, args.preset, args.output)
    except (FileNotFoundError, ImportError, CheckpointReadError, CheckpointMismatchError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
