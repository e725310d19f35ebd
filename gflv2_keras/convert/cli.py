"""``gflv2 convert --checkpoint FILE.pth --preset NAME --output DIR``."""

from gflv2_keras.utils.locks import hold_beside, releases_locks


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
    parser.add_argument("--output", required=True, metavar="DIR", help="preset folder to write (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing preset folder at --output")
    parser.set_defaults(func=run)


@releases_locks  # the lock beside --output (utils.locks) is held until the command ends
def run(args):
    from gflv2_keras.utils.cli import UserError
    from gflv2_keras.utils.files import refuse_existing

    refuse_existing(args.output, args.overwrite, "preset folder")  # before waiting on anything
    # The folder appears by a rename (utils.files.publish_directory): one convert writes it at a time.
    hold_beside(args.output, "--output")
    from gflv2_keras.convert.mapping import convert_checkpoint

    try:
        convert_checkpoint(args.checkpoint, args.preset, args.output, overwrite=args.overwrite)
    except ImportError as error:  # PyTorch is an optional extra; the message says how to install it
        raise UserError(str(error)) from None
    return 0
