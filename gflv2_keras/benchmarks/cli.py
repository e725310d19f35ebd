"""``gflv2 benchmark``: inference speed table, and on request training, DCN-layer, runtime and backend tables."""

import os


def register(subparsers):
    parser = subparsers.add_parser("benchmark")
    parser.add_argument("--preset", default="gflv2_r50_fpn_1x_coco")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"),
                        help="uint8 image size; its canvas is the network input (default 800 1216)")
    parser.add_argument("--precision", "--precisions", dest="precisions", default="float32,bfloat16",
                        help="comma list of float32,bfloat16 (bfloat16: dtype='mixed_bfloat16')")
    parser.add_argument("--batches", default="1", help="comma list of predict batch sizes for images/s (e.g. 1,2,4)")
    parser.add_argument("--torch", action="store_true",
                        help="also time the independent PyTorch GFLv2 of the tests (inference, and with --training the "
                             "same training step); needs PyTorch and a source checkout (tests/torch_reference)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant")
    parser.add_argument("--repeats", "--iterations", dest="repeats", type=int, default=5,
                        help="interleaved timed rounds; the median is reported")
    parser.add_argument("--dcn", action="store_true", help="also time one DCN layer at a ResNet c4 shape")
    parser.add_argument("--training", action="store_true",
                        help="also time training steps (images/s) of --train-presets at --train-size")
    parser.add_argument("--train-presets", default="gflv2_tiny_r18_demo,gflv2_r50_fpn_1x_coco")
    parser.add_argument("--train-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--train-batch", type=int, default=1)
    parser.add_argument("--train-warmup", type=int, default=2, help="untimed training steps (default 2)")
    parser.add_argument("--train-iterations", type=int, default=5, help="timed training steps; the median is reported")
    parser.add_argument("--train-modes", default="graph,xla", help="comma list of graph,xla (our training step)")
    parser.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads for --torch (default 2)")
    parser.add_argument("--skip-detector", action="store_true", help="skip the inference table")
    parser.add_argument("--runtime", help="only compare detect latency of these runtimes (comma list of tf,"
                        "onnxruntime,openvino,litert) at --size; see benchmarks/runtime_benchmark.py")
    parser.add_argument("--threads", type=int, default=2, help="--runtime: intra-op threads of every runtime")
    parser.add_argument("--random-weights", action="store_true", help="--runtime: do not load the preset's weights")
    parser.add_argument("--backends", help="only compare predict latency on these Keras backends (comma list of "
                        "tensorflow,jax,torch; one worker process each, interleaved rounds)")
    parser.add_argument("--compare-with", metavar="DIR", help="--backends: also time TensorFlow predict of the "
                        "gflv2_keras in this source checkout (e.g. an older release), in the same run")
    parser.set_defaults(func=run)


def run(args):
    if args.backends:
        return run_backends(args)
    if args.runtime:
        from gflv2_keras.benchmarks.runtime_benchmark import run_from_args

        return run_from_args(args)
    from gflv2_keras.benchmarks.inference_benchmark import format_table, run_inference_benchmark

    if args.torch:
        from gflv2_keras.benchmarks.torch_training import missing_torch_reference

        problem = missing_torch_reference()
        if problem:
            raise ValueError(f"--torch: {problem}")  # before minutes of other timings

    if not args.skip_detector:
        rows, context = run_inference_benchmark(
            preset=args.preset,
            height=args.size[0],
            width=args.size[1],
            precisions=[p for p in args.precisions.split(",") if p],
            batches=[int(b) for b in args.batches.split(",") if b],
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
            [p for p in args.train_presets.split(",") if p],
            args.train_size[0],
            args.train_size[1],
            args.train_batch,
            modes=[m for m in args.train_modes.split(",") if m],
            warmup=args.train_warmup,
            iterations=args.train_iterations,
            torch=args.torch,
            threads=args.torch_threads,
        )
        print()
        print(training_benchmark.format_table(rows, machine_facts()))
    return 0


def run_backends(args):
    from gflv2_keras.benchmarks.backend_benchmark import format_backend_table, run_backend_benchmark
    from gflv2_keras.benchmarks.inference_benchmark import machine_facts

    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - {"tensorflow", "jax", "torch"})
    if unknown:
        raise ValueError(f"--backends: unknown backend(s) {', '.join(unknown)}; choose from tensorflow, jax, torch")
    if args.compare_with and not os.path.isdir(os.path.join(args.compare_with, "gflv2_keras")):
        raise ValueError(f"--compare-with: {args.compare_with} has no gflv2_keras package folder")
    rows = run_backend_benchmark(args.preset, args.size[0], args.size[1], backends, args.compare_with,
                                 warmup=args.warmup, repeats=args.repeats)  # fmt: skip
    print(format_backend_table(rows, args.preset, args.size[0], args.size[1], machine_facts()))
