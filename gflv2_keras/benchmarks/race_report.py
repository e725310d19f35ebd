"""The table of ``gflv2 benchmark --runtime``: every runtime x precision against the floors and the goals.

Rows (``runtime_benchmark.run_runtime_benchmark``) are dicts::

    {"runtime": "openvino", "precision": "int8", "runs": "detect" | "network only", "note": str,
     "times": {batch: {"median_ms", "min_ms", "max_ms"}},   # per call of `batch` images
     "unavailable": {batch: reason}}                         # the batches that could not run

and ``context`` holds the run's facts (``format_race_table``) with the matmul rates
``{"floors": {precision: {library: operations/s}}, "network_flops": per image}``.

Arithmetic, all per image (a call of batch ``b`` takes ``median_ms``; per image ``median_ms / b``):

* images/s = ``1000 / per-image ms``; ``vs tf float32`` = tf float32's per-image ms / the row's, at
  the same batch;
* floor of a precision = network FLOPs / the fastest library's matmul rate of that precision
  (``matmul_floors.fastest``), in ms per image; ``floor share`` = floor ms / the row's per-image ms
  (int8-dynamic rows: the int8 floor);
* the goals (``GOALS``) at each batch: the fastest int8 ``detect`` row vs tf float32 (>= 2.0x); the
  fastest bfloat16 ``detect`` row vs PyTorch's bf16 channels_last network alone (>= 1.2x); the
  fastest int8 ``detect`` row's floor share (>= 0.5). int8 there is the calibrated ``int8`` (weights
  and activations); the weights-only ``int8-dynamic`` rows are in the table, not in the goals.
"""

from gflv2_keras.benchmarks.matmul_floors import MATMUL_SIZE, fastest

# (text, target, unit); the values come from ``goal_values``.
GOALS = (
    ("int8 end to end vs tf float32 detect", 2.0, "x"),
    ("best bfloat16 end to end vs PyTorch bf16 channels_last network alone", 1.2, "x"),
    ("int8 end to end, share of the int8 matmul floor", 0.5, ""),
)


def floor_precision(precision):
    """The matmul floor a row of ``precision`` is held against (``int8-dynamic`` -> ``int8``)."""
    return "int8" if precision.startswith("int8") else precision


def label(row):
    return f"{row['runtime']} {row['precision']}"


def per_image_ms(row, batch):
    """Median ms per image of ``row`` at ``batch`` (``None`` where it did not run)."""
    timed = row["times"].get(batch)
    return None if timed is None else timed["median_ms"] / batch


def floor_ms(context):
    """``{precision: (library, ms per image)}``: the network's FLOPs at the fastest matmul rate."""
    flops = context.get("network_flops")
    if not flops:
        return {}
    return {p: (library, flops / rate * 1e3) for p, (library, rate) in fastest(context.get("floors", {})).items()}


def floor_share(row, batch, floors):
    """Floor ms / the row's per-image ms at ``batch`` (``None`` without either)."""
    ms, floor = per_image_ms(row, batch), floors.get(floor_precision(row["precision"]))
    return None if ms is None or floor is None else floor[1] / ms


def _find(rows, runtime, precision):
    return next((r for r in rows if r["runtime"] == runtime and r["precision"] == precision), None)


def _fastest(rows, batch, precisions):
    """The fastest ``detect`` row of ``precisions`` at ``batch``, or ``None``."""
    timed = [r for r in rows if r["runs"] == "detect" and r["precision"] in precisions and per_image_ms(r, batch)]
    return min(timed, key=lambda r: per_image_ms(r, batch), default=None)


def goal_values(rows, context, batch):
    """Per ``GOALS`` entry: ``(row label, value)`` at ``batch``, or ``None`` where a row is missing."""
    floors = floor_ms(context)
    int8, bf16 = _fastest(rows, batch, ("int8",)), _fastest(rows, batch, ("bfloat16",))
    tf32, torch16 = _find(rows, "tf", "float32"), _find(rows, "torch", "bfloat16")
    tf_ms = tf32 and per_image_ms(tf32, batch)
    torch_ms = torch16 and per_image_ms(torch16, batch)
    share = int8 and floor_share(int8, batch, floors)
    return [
        (label(int8), tf_ms / per_image_ms(int8, batch)) if int8 and tf_ms else None,
        (label(bf16), torch_ms / per_image_ms(bf16, batch)) if bf16 and torch_ms else None,
        (label(int8), share) if share else None,
    ]


def _ms(value):
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _rate(value):
    return f"{value / 1e9:.0f}"


def _batch_cells(row, batch):
    timed = row["times"].get(batch)
    if timed is None:
        return ["–", "–"]
    return [f"{_ms(timed['median_ms'])} ({_ms(timed['min_ms'])}–{_ms(timed['max_ms'])})",
            f"{1e3 / per_image_ms(row, batch):.2f}"]  # fmt: skip


def _per_batch(values):
    return " / ".join("–" if v is None else v for v in values)


def format_race_table(rows, context):
    """Markdown: header (input, batches, threads, rounds, machine), one row per runtime x precision
    (fastest per image first, unavailable ones last, saying why), the floors and the goals."""
    batches, floors = list(context["batches"]), floor_ms(context)
    header = (
        f"preset {context['preset']}{' (random weights)' if context['random_weights'] else ''}, "
        f"image {context['height']}x{context['width']} uint8 (canvas {context['canvas'][0]}x{context['canvas'][1]}), "
        f"batch {', '.join(map(str, batches))}, {context['threads']} threads per runtime; "
        f"{context['warmup']} warm-up + median of {context['iterations']} interleaved rounds; "
        f"CPU {context['cpu']} ({context['isa'] or 'ISA unknown'}); {context['versions']}"
    )
    columns = ["runtime", "precision", "runs"]
    for b in batches:
        columns += [f"b{b} ms per call (min–max)", f"b{b} images/s"]
    per_batch = f" (b{' / b'.join(map(str, batches))})" if len(batches) > 1 else ""
    columns += [f"vs tf float32{per_batch}", f"floor share{per_batch}", "artefact"]
    lines = [header, "", "| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if c in ("runtime", "precision", "runs", "artefact") else "---:" for c in columns)
             + "|"]  # fmt: skip
    tf32 = _find(rows, "tf", "float32")

    def sort_key(row):
        times = [per_image_ms(row, b) for b in batches if per_image_ms(row, b)]
        return times[0] if times else float("inf")

    for row in sorted((r for r in rows if r["times"]), key=sort_key):
        vs_tf = [f"{per_image_ms(tf32, b) / per_image_ms(row, b):.2f}x"
                 if tf32 and per_image_ms(tf32, b) and per_image_ms(row, b) else None for b in batches]  # fmt: skip
        shares = [floor_share(row, b, floors) for b in batches]
        shares = [None if share is None else f"{share:.2f}" for share in shares]
        note = row["note"] + "".join(f"; b{b} not available: {why}" for b, why in row["unavailable"].items())
        cells = [row["runtime"], row["precision"], row["runs"]]
        for b in batches:
            cells += _batch_cells(row, b)
        lines.append("| " + " | ".join(cells + [_per_batch(vs_tf), _per_batch(shares), note]) + " |")
    for row in rows:
        if not row["times"]:
            cells = [row["runtime"], row["precision"], row["runs"]] + ["–"] * (2 * len(batches) + 2)
            lines.append("| " + " | ".join(cells + [f"not available: {row['note']}"]) + " |")
    lines += _floor_lines(context, floors)
    lines += _goal_lines(rows, context, batches)
    return "\n".join(lines)


def _floor_lines(context, floors):
    rates = context.get("floors") or {}
    if not rates:
        return ["", "matmul floors: none timed"]
    parts = []
    for precision, (library, rate) in fastest(rates).items():
        others = ", ".join(f"{lib} {_rate(r)}" for lib, r in rates[precision].items() if lib != library)
        unit = "GOP/s" if precision == "int8" else "GFLOP/s"
        parts.append(f"{precision} {_rate(rate)} {unit} ({library}{'; ' + others if others else ''})")
    lines = ["", f"matmul floors ({context.get('matmul_size', MATMUL_SIZE)}^3, {context['threads']} threads, timed "
             f"in the same rounds), the fastest library of each precision: " + ", ".join(parts)]  # fmt: skip
    if floors:
        lines.append(
            f"network {context['network_flops'] / 1e9:.4g} GFLOP per image -> floor per image: "
            + ", ".join(f"{p} {_ms(ms)} ms" for p, (_, ms) in floors.items())
            + "; floor share = floor ms / the row's ms per image (int8-dynamic rows: the int8 floor)"
        )
    return lines


def _goal_lines(rows, context, batches):
    values = {b: goal_values(rows, context, b) for b in batches}
    lines = ["", "| goal (per image, one run) | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]  # fmt: skip
    for index, (text, target, unit) in enumerate(GOALS):
        cells = []
        for b in batches:
            found = values[b][index]
            if found is None:
                cells.append("– (a row it needs is missing)")
            else:
                name, value = found
                cells.append(f"{name} {value:.2f}{unit}: {'met' if value >= target else 'not met'}")
        lines.append(f"| {text} >= {target}{unit} | " + " | ".join(cells) + " |")
    return lines
