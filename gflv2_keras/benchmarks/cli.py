"""``gflv2 benchmark``: how fast the detector runs here, against the machine's floors and other implementations.

By default one table: ``predict`` / ``detect`` / the bare network per precision and batch size at
``--image-size H W`` (uint8 image; the network input is its keep-ratio canvas), against the
matmul (GEMM) floor of this CPU / GPU, optionally with the independent PyTorch GFLv2 of the
tests (``--torch``). On request: training steps (``--training``), one DCN layer (``--dcn``),
the race of every runtime x precision (``--runtime``: TensorFlow, the exports, PyTorch; float32,
bfloat16, int8; against the fastest matmul floors), or ``predict`` on each Keras backend
(``--backends``). BENCHMARKS.md holds the recorded tables and their commands.
"""

import os

from gflv2_keras.benchmarks import race_rows
from gflv2_keras.models.precision import PRECISIONS
from gflv2_keras.utils.arguments import (
    add_image_size_argument,
    existing_dir,
    name_list,
    non_negative_int,
    positive_int,
)

BACKENDS = ("tensorflow", "jax", "torch")
TRAIN_MODES = ("graph", "xla")


def _runtimes(text):
    """``--runtime``: checked against ``race_rows.NAMES``, kept as text (``run_from_args`` splits it)."""
    return ",".join(name_list(*race_rows.NAMES)(text))


def register(subparsers):
    parser = subparsers.add_parser("benchmark", description=__doc__)
    parser.add_argument("--preset", default="gflv2_r50_fpn_1x_coco",
                        help="preset (name or folder) whose architecture is timed; weights are not needed "
                        "(default gflv2_r50_fpn_1x_coco)")
    add_image_size_argument(parser, "--size", default=(800, 1216),
                            help="uint8 image size timed; its keep-ratio canvas is the network input "
                            "(default 800 1216)")
    precisions = dict.fromkeys([*PRECISIONS, *race_rows.PRECISIONS])  # checked per mode in check_benchmark_args
    parser.add_argument("--precision", "--precisions", dest="precisions", type=name_list(*precisions),
                        help="comma list of " + ",".join(PRECISIONS) + " (bfloat16: dtype='mixed_bfloat16'; "
                        "default float32,bfloat16); with --runtime: of float32,bfloat16,int8,int8-dynamic "
                        "(default float32,bfloat16,int8)")
    parser.add_argument("--batches", type=name_list(convert=positive_int), default="1",
                        help="comma list of batch sizes for images/s (e.g. 1,2,4; default 1): predict's, "
                        "and with --runtime every row's (exports written at each batch size)")
    parser.add_argument("--torch", action="store_true",
                        help="also time the independent PyTorch GFLv2 of the tests (inference, and with --training the "
                             "same training step); needs PyTorch and a source checkout (tests/torch_reference)")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls per variant (default 2)")
    parser.add_argument("--repeats", "--iterations", dest="repeats", type=positive_int, default=5,
                        help="interleaved timed rounds; the median is reported (default 5)")
    parser.add_argument("--dcn", action="store_true", help="also time one DCN layer at a ResNet c4 shape")
    parser.add_argument("--training", action="store_true",
                        help="also time training steps (images/s) of --train-presets at --train-size")
    parser.add_argument("--train-presets", type=name_list(), default="gflv2_tiny_r18_demo,gflv2_r50_fpn_1x_coco",
                        help="--training: comma list of presets (default gflv2_tiny_r18_demo,gflv2_r50_fpn_1x_coco)")
    add_image_size_argument(parser, flag="--train-size", default=(512, 512), multiple_of=32,
                            help="--training: network input (canvas) of the training steps (default 512 512)")
    parser.add_argument("--train-batch", type=positive_int, default=1, help="--training: images per step (default 1)")
    parser.add_argument("--train-warmup", type=non_negative_int, default=2,
                        help="--training: untimed training steps (default 2)")
    parser.add_argument("--train-iterations", type=positive_int, default=5,
                        help="--training: timed training steps; the median is reported (default 5)")
    parser.add_argument("--train-modes", type=name_list(*TRAIN_MODES), default="graph,xla",
                        help="--training: comma list of graph,xla (our training step without / with XLA)")
    parser.add_argument("--torch-threads", type=positive_int, default=2,
                        help="torch.set_num_threads for --torch (default 2)")
    parser.add_argument("--skip-detector", action="store_true", help="skip the inference table")
    parser.add_argument("--runtime", type=_runtimes, nargs="?", const=",".join(race_rows.RUNTIMES),
                        metavar="NAMES", help="only race the runtimes at --image-size: every --precision x "
                        "--batches of these (comma list of tf, onnxruntime, openvino, litert, torch; or one row as "
                        "runtime-precision, e.g. openvino-int8; alone: all of them), with the matmul floors and the "
                        "goal ratios (benchmarks/runtime_benchmark.py)")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="--runtime: intra-op threads of every runtime and matmul floor (default 2)")
    parser.add_argument("--random-weights", action="store_true", help="--runtime: do not load the preset's weights")
    parser.add_argument("--backends", type=name_list(*BACKENDS), help="only compare predict latency on these Keras "
                        "backends (comma list of tensorflow,jax,torch; one worker process each, interleaved rounds)")
    parser.add_argument("--mixed-sizes", metavar="N", type=positive_int,
                        help="only time detect over N uint8 photos of mixed common sizes, compilations included "
                        "(benchmarks/mixed_sizes_benchmark.py)")
    parser.add_argument("--compare-with", metavar="DIR", type=existing_dir, help="--backends / --mixed-sizes: also "
                        "time TensorFlow in the gflv2_keras of this source checkout (e.g. an older release), in the "
                        "same run")
    parser.set_defaults(func=run, precheck=check_benchmark_args)


def check_benchmark_args(args):
    """The checks of ``gflv2 benchmark`` that need no TensorFlow (``precheck``)."""
    if args.compare_with and not os.path.isdir(os.path.join(args.compare_with, "gflv2_keras")):
        raise ValueError(f"--compare-with: {args.compare_with} has no gflv2_keras package folder")
    if args.compare_with and not (args.backends or args.mixed_sizes):
        raise ValueError("--compare-with goes with --backends or --mixed-sizes")
    if args.precisions:
        valid = race_rows.PRECISIONS if args.runtime else tuple(PRECISIONS)
        wrong = [p for p in args.precisions if p not in valid]
        if wrong:
            raise ValueError(f"--precision {','.join(wrong)} is not a precision of "
                             f"{'the --runtime race' if args.runtime else 'the inference table (int8: --runtime)'}"
                             f"; valid: {','.join(valid)}")  # fmt: skip
    if args.runtime:
        race_rows.select_rows(args.runtime.split(","), args.precisions or race_rows.DEFAULT_PRECISIONS)
    if args.torch:
        from gflv2_keras.benchmarks.torch_training import missing_torch_reference

        problem = missing_torch_reference()
        if problem:
            raise ValueError(f"--torch: {problem}")  # before minutes of other timings


def run(args):
    if args.backends:
        return run_backends(args)
    if args.mixed_sizes:
        return run_mixed_sizes(args)
    if args.runtime:
        from gflv2_keras.benchmarks.runtime_benchmark import run_from_args

        return run_from_args(args)
    from gflv2_keras.benchmarks.inference_benchmark import format_table, run_inference_benchmark

    if not args.skip_detector:
        rows, context = run_inference_benchmark(
            preset=args.preset,
            height=args.size[0],
            width=args.size[1],
            precisions=args.precisions or ("float32", "bfloat16"),
            batches=args.batches,
            with_torch=args.torch,
            warmup=args.warmup,
            repeats=args.repeats,
            torch_threads=args.torch_threads,
        )
        print()
        print(format_table(rows, context))
    if args.dcn:
        from gflv2_keras.benchmarks import dcn_benchmark

        print()
        print(dcn_benchmark.format_table(dcn_benchmark.run_dcn_benchmark()))
    if args.training:
        from gflv2_keras.benchmarks import training_benchmark
        from gflv2_keras.benchmarks.inference_benchmark import machine_facts

        rows = training_benchmark.run_training_benchmark(
            args.train_presets,
            args.train_size[0],
            args.train_size[1],
            args.train_batch,
            modes=args.train_modes,
            warmup=args.train_warmup,
            iterations=args.train_iterations,
            torch=args.torch,
            threads=args.torch_threads,
        )
        print()
        print(training_benchmark.format_table(rows, machine_facts()))
    return 0


def run_mixed_sizes(args):
    from gflv2_keras.benchmarks import mixed_sizes_benchmark as mixed
    from gflv2_keras.benchmarks.inference_benchmark import machine_facts
    from gflv2_keras.models.preprocessing import DEFAULT_SCALE, canvas_size
    from gflv2_keras.models.preset_io import preset_config

    rows, sizes = mixed.run_mixed_sizes_benchmark(args.preset, args.mixed_sizes, args.compare_with)
    scale = preset_config(args.preset)[0].get("input_scale", DEFAULT_SCALE)
    canvases = len({canvas_size(h, w, scale) for h, w in sizes})
    print(mixed.format_mixed_sizes_table(rows, args.preset, sizes, machine_facts(), canvases))
    return 0


def run_backends(args):
    from gflv2_keras.benchmarks.backend_benchmark import format_backend_table, run_backend_benchmark
    from gflv2_keras.benchmarks.inference_benchmark import machine_facts

    rows = run_backend_benchmark(args.preset, args.size[0], args.size[1], args.backends, args.compare_with,
                                 warmup=args.warmup, repeats=args.repeats)  # fmt: skip
    print(format_backend_table(rows, args.preset, args.size[0], args.size[1], machine_facts()))
