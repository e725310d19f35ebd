"""``gflv2 evaluate``: COCO bbox AP of a preset on an annotated image folder."""

from gflv2_keras.models.precision import PRECISIONS, add_precision_argument

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def register(subparsers):
    parser = subparsers.add_parser(
        "evaluate", description=__doc__
    )
    parser.add_argument("--preset", required=True, help="preset name (weights in the preset home) or preset folder")
    parser.add_argument("--annotations", required=True, help="COCO annotation JSON (e.g. instances_val2017.json)")
    parser.add_argument("--images", required=True, help="folder of the annotation file's images")
    parser.add_argument("--output", help="write the detections (COCO results JSON) here")
    parser.add_argument("--max-images", type=int, help="evaluate the first N images only")
    add_precision_argument(parser)
    parser.set_defaults(func=run)


def run(args):
    import os

    from gflv2_keras.evaluation.coco_evaluator import evaluate
    from gflv2_keras.models.detector import GFLV2Detector

    for path, what in ((args.annotations, "annotation file"), (args.images, "image folder")):
        if not os.path.exists(path):
            raise SystemExit(f"gflv2 evaluate: {what} {path} does not exist")
    detector = GFLV2Detector.from_preset(args.preset, dtype=PRECISIONS[args.precision])
    results = evaluate(
        detector, args.annotations, args.images, output_json=args.output, max_images=args.max_images, verbose=False
    )
    print(f"COCO bbox on {results['num_images']} images ({results['num_detections']} detections):")
    for name in METRICS:
        print(f"  {name:<5} {results[name]:.4f}")
    if args.output:
        print(f"detections written to {args.output}")
    return 0
