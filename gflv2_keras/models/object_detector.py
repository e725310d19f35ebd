"""``GFLV2ObjectDetector`` (also ``GFLV2Detector``): the keras-hub task of GFLv2.

``GFLV2Backbone`` (image encoder + FPN) → GFL head, with the GFL loss for ``fit``, the official
post-processing for ``predict``/``detect``, and keras-hub presets.
"""

import keras
import keras_hub
import numpy as np
from keras import ops

from gflv2_keras.models.backbone import GFLV2Backbone
from gflv2_keras.models.fast_inference import foldable_pairs, inference_runner, validate_jit
from gflv2_keras.models.gfl_head import GFLHead
from gflv2_keras.models.inputs import is_array, validate_batch, validate_image
from gflv2_keras.models.preprocessing import DEFAULT_SCALE, canvas_size
from gflv2_keras.models.preprocessor import GFLV2ImageConverter, GFLV2ObjectDetectorPreprocessor
from gflv2_keras.ops.box_formats import convert_boxes, validate_bounding_box_format
from gflv2_keras.ops.boxes import STRIDES, anchor_points, level_sizes

DEFAULT_TEST_CONFIG = {"nms_pre": 1000, "score_threshold": 0.05, "iou_threshold": 0.6, "max_detections": 100}
DEFAULT_TRAIN_CONFIG = {"topk": 9, "loss_weights": [1.0, 0.25, 2.0]}
LOSS_NAMES = ("qfl", "dfl", "giou")


@keras.saving.register_keras_serializable(package="gflv2_keras")
class GFLV2ObjectDetector(keras_hub.models.ObjectDetector):
    """The GFLv2 (or GFLv1) dense detector of Li et al., CVPR 2021, with official numerics.

    The vocabulary is Keras' (``keras.utils.bounding_boxes``, keras-hub ``ObjectDetector``):
    ``boxes`` in ``bounding_box_format``, ``labels`` for 0-based class ids (-1 = padding),
    ``confidence`` for the GFLv2 joint score (classification x localisation quality).

    Args:
        backbone: a ``GFLV2Backbone`` (image encoder + FPN); or, as the presets and the layout
            before keras-hub write it, the encoder config ``{"type": "resnet" | "resnext" |
            "res2net", ...}`` (``models.backbones``), from which a ``GFLV2Backbone`` is built
            with ``fpn_channels``.
        num_classes: number of object classes (80 for COCO).
        head: extra ``GFLHead`` arguments (``use_dgqp=False`` gives GFLv1).
        preprocessor: a ``GFLV2ObjectDetectorPreprocessor`` (keep-ratio resize, normalise, pad
            to /32); default one built from ``input_scale``.
        test_config: ``nms_pre``, ``score_threshold``, ``iou_threshold``, ``max_detections``.
        train_config: ``topk`` (ATSS) and ``loss_weights`` (QFL, DFL, GIoU).
        class_names: optional list of ``num_classes`` names (datasets are matched to them by name).
        bounding_box_format: box format of ``fit`` targets and ``predict``/``detect`` outputs,
            one of ``ops.box_formats.BOUNDING_BOX_FORMATS`` (those of ``keras.utils.bounding_boxes``;
            default ``"xyxy"``). Relative (``rel_*``) targets are relative to the network-input
            batch's ``(H, W)``; relative predictions to the original image's ``(H, W)``.
            Internally everything is xyxy pixels.
        inference_jit: run the network of ``predict``/``detect`` under XLA (TensorFlow backend):
            ``"auto"`` (measured per device and precision, ``models.fast_inference.XLA_DEFAULTS``),
            True, False.
        fpn_channels, input_scale: with a config-dict ``backbone`` only: FPN width (256) and the
            keep-ratio target ``(long_max, short_max)`` of the default preprocessor ((1333, 800)).
        dtype: Keras dtype policy of every layer, e.g. ``"mixed_bfloat16"`` (keras-hub meaning;
            ``from_preset(..., dtype=...)``). Decoding, scores and NMS stay float32.

    Calling conventions:
        * ``detector(images)``: ``images`` float32 ``[B, H, W, 3]`` normalised RGB, zero padded
          (``H``, ``W`` multiples of 32 for exact FPN sizes). Returns raw outputs
          ``{"confidence": [B, N, C'] per-class joint probabilities, "box_logits": [B, N, 4 * (reg_max + 1)]}``
          with ``C' = num_classes + 1`` (GFLv2, official extra column) or ``num_classes``
          (GFLv1); points ordered P3..P7, row-major inside a level; box-logit channels
          side-major (left, top, right, bottom) x bins, already multiplied by the level scale.
        * ``detector.predict(images)``: ``images`` uint8 RGB ``[B, H, W, 3]`` of one size, any
          size. Returns ``{"boxes": [B, 100, 4] in bounding_box_format of the original image,
          "confidence": [B, 100], "labels": [B, 100] (0-based), "num_detections": [B]}``;
          rows past ``num_detections`` are -1 (boxes included, whatever the format).
        * ``detector.detect(image)``: one uint8 ``[H, W, 3]`` image → NumPy dict without padding.
        * ``fit(raw_dataset)``: a ``tf.data.Dataset`` of raw keras-hub samples ``{"images": uint8
          [H, W, 3], "bounding_boxes": {"boxes", "labels"}}`` (original pixels, any size); the
          training preprocessing is applied for you (``prepare_dataset``).
        * ``fit(images, {"boxes": [B, M, 4] in bounding_box_format of the network input,
          "labels": [B, M] (-1 pad), optional "image_shape": [B, 2] per-image padded (h, w)})``
          trains with ATSS + QFL/DFL/GIoU (``"classes"`` is accepted instead of ``"labels"``).

    ``compile()`` with no optimizer uses the official one: ``CoupledSGD`` (PyTorch SGD with
    coupled L2 decay), learning rate ``0.01 * global_batch_size / 16``, momentum 0.9, weight
    decay 1e-4 (``configs/gfocal/gfocal_r50_fpn_1x.py``; no warm-up or step decay: use a
    recipe, ``gflv2 train``, for the full schedule).

    Example:
        >>> detector = GFLV2Detector.from_preset("gflv2_test_r18_nano", load_weights=False,
        ...                                      bounding_box_format="rel_xyxy")
        >>> detector.compile(global_batch_size=2)       # official CoupledSGD, lr 0.01 * 2 / 16
        >>> images = np.zeros((2, 128, 128, 3), np.float32)  # normalised, padded network input
        >>> targets = {"boxes": np.array([[[0.1, 0.1, 0.5, 0.6]], [[0.2, 0.3, 0.9, 0.8]]], np.float32),
        ...            "labels": np.array([[0], [2]], np.int32)}
        >>> history = detector.fit(images, targets, epochs=1, verbose=0)
        >>> detections = detector.detect(np.zeros((240, 320, 3), np.uint8))  # rel_xyxy boxes
    """

    backbone_cls = GFLV2Backbone
    preprocessor_cls = GFLV2ObjectDetectorPreprocessor

    def __init__(
        self,
        backbone,
        num_classes=80,
        head=None,
        preprocessor=None,
        test_config=None,
        train_config=None,
        class_names=None,
        bounding_box_format="xyxy",
        inference_jit="auto",
        fpn_channels=None,
        input_scale=None,
        dtype=None,
        **kwargs,
    ):
        if isinstance(backbone, dict):
            backbone = GFLV2Backbone(backbone, fpn_channels=256 if fpn_channels is None else fpn_channels, dtype=dtype)
        elif fpn_channels is not None:
            raise ValueError("GFLV2ObjectDetector: fpn_channels belongs to the backbone; pass it to GFLV2Backbone")
        if preprocessor is None:
            scale = DEFAULT_SCALE if input_scale is None else input_scale
            preprocessor = GFLV2ObjectDetectorPreprocessor(GFLV2ImageConverter(image_scale=scale))
        elif input_scale is not None:
            raise ValueError("GFLV2ObjectDetector: input_scale belongs to the preprocessor's image converter")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        kwargs.pop("compile", None)
        # keras-hub tasks take their dtype from the backbone; the task's own layers are made after
        # Task.__init__ so that every backend (PyTorch included) tracks them.
        super().__init__(dtype=backbone.dtype_policy, compile=False, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.inference_jit = validate_jit(inference_jit)
        self.bounding_box_format = validate_bounding_box_format(bounding_box_format)
        self.num_classes = int(num_classes)
        self.head_config = dict(head or {})
        self.test_config = {**DEFAULT_TEST_CONFIG, **(test_config or {})}
        self.train_config = {**DEFAULT_TRAIN_CONFIG, **(train_config or {})}
        self.class_names = list(class_names) if class_names is not None else None
        self.head = GFLHead(num_classes=self.num_classes, **self.head_config, name="bbox_head", dtype=self.dtype_policy)
        self.reg_max = self.head.reg_max
        self.strides = STRIDES
        # Created here, not in compute_loss: Keras forbids new state once the model is built.
        self.loss_component_trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}
        self.predict_box_distributions = False  # set by ``predict`` for ``predict_step`` (Keras' loop)
        self.accumulate_steps = 1  # micro-batches per optimizer update (``models.train_function``)
        self.build_for_inference()  # every weight exists from here on (keras-hub loads weights next)
        self.compile()

    @property
    def input_scale(self):
        """``(long_max, short_max)`` keep-ratio target of ``predict``/``detect`` (the preprocessor's)."""
        return tuple(self.preprocessor.image_scale) if self.preprocessor is not None else DEFAULT_SCALE

    @property
    def backbone_config(self):
        """The image encoder's plain-data config (``{"type": "resnet", "depth": 50, ...}``)."""
        return dict(self.backbone.encoder_config)

    @property
    def fpn_channels(self):
        return self.backbone.fpn_channels

    # ------------------------------------------------------------------ forward
    def call(self, images, training=None):
        confidence, box_logits = self.head(self.backbone(images, training=training))
        return {"confidence": confidence, "box_logits": box_logits}

    def points_for(self, height, width):
        """Feature sizes and anchor points for a padded ``height x width`` input.

        Returns ``(sizes, points [N, 2], point_strides [N])`` (see ``ops.boxes``).
        """
        sizes = level_sizes(height, width, self.strides)
        points, point_strides = anchor_points(sizes, self.strides)
        return sizes, points, point_strides

    # ------------------------------------------------------------------ training
    def compile(self, optimizer="auto", *, global_batch_size=16, **kwargs):
        """``keras.Model.compile`` whose default optimizer is the official one.

        Args:
            optimizer: ``"auto"`` (default) for ``CoupledSGD(learning_rate=0.01 *
                global_batch_size / 16, momentum=0.9, weight_decay=1e-4)``, the official
                ``torch.optim.SGD`` of ``configs/gfocal/gfocal_r50_fpn_1x.py`` with the linear
                scaling rule; anything else is passed to Keras unchanged.
            global_batch_size: images per optimizer step over all replicas; only used by
                ``"auto"``.
            **kwargs: other ``keras.Model.compile`` arguments. The loss is the model's own
                (``compute_loss``), so ``loss`` is not needed.
        """
        if isinstance(optimizer, str) and optimizer == "auto":
            from gflv2_keras.training.optimizer import CoupledSGD
            from gflv2_keras.training.schedule import scale_learning_rate

            optimizer = CoupledSGD(
                learning_rate=scale_learning_rate(0.01, global_batch_size), momentum=0.9, weight_decay=1e-4
            )
        keras.Model.compile(self, optimizer=optimizer, **kwargs)  # not ObjectDetector's RetinaNet losses

    def get_compile_config(self):
        """The optimizer, serialised (``compile_from_config`` rebuilds it when a ``.keras`` file loads)."""
        if self.optimizer is None:
            return None
        return {"optimizer": keras.optimizers.serialize(self.optimizer)}

    def compile_from_config(self, config):
        """Compile with the saved optimizer (its state is restored by Keras after this)."""
        if config and config.get("optimizer") is not None:
            self.compile(optimizer=keras.optimizers.deserialize(config["optimizer"]))

    def prepare_dataset(self, raw_dataset, batch_size=2, flip_prob=0.5, seed=0, shuffle_buffer=None, scale=None):
        """Training batches of a ``tf.data.Dataset`` of raw samples (keras-hub style).

        Raw samples are ``{"images": uint8 [H, W, 3] any size, "bounding_boxes": {"boxes":
        [M, 4] in bounding_box_format of the original image, "labels": [M]}}``; the library's
        training preprocessing is applied (``data.raw.prepare_raw_dataset``: keep-ratio resize
        to ``scale`` (default ``input_scale``), flip, normalise, pad to the fixed canvas).
        ``fit`` calls this itself when given such a dataset.
        """
        from gflv2_keras.data.raw import prepare_raw_dataset

        return prepare_raw_dataset(
            raw_dataset,
            batch_size,
            self.bounding_box_format,
            scale=tuple(scale) if scale is not None else self.input_scale,
            flip_prob=flip_prob,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
        )

    def fit(self, x=None, y=None, batch_size=None, prepare_options=None, **kwargs):
        """``keras.Model.fit``; a ``tf.data.Dataset`` of raw samples (see ``prepare_dataset``) is
        first turned into training batches of ``batch_size`` images (default 2), with the
        keyword arguments ``prepare_options`` of ``prepare_dataset`` (e.g. ``{"flip_prob": 0}``)."""
        from gflv2_keras.data.raw import is_raw_dataset

        if is_raw_dataset(x):
            x, batch_size = self.prepare_dataset(x, batch_size or 2, **(prepare_options or {})), None
        elif prepare_options:
            raise ValueError("GFLV2ObjectDetector.fit: prepare_options applies to a dataset of raw samples only")
        validation = kwargs.get("validation_data")
        if is_raw_dataset(validation):
            kwargs["validation_data"] = self.prepare_dataset(validation, batch_size or 2, flip_prob=0.0)
        # keras.Model's loop, not keras-hub's PipelineModel one: the inputs are network inputs already.
        return keras.Model.fit(self, x, y, batch_size=batch_size, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        """``keras.Model.evaluate`` (the GFL loss); a dataset of raw samples is prepared as in ``fit``
        (no flips)."""
        from gflv2_keras.data.raw import is_raw_dataset

        if is_raw_dataset(x):
            x, batch_size = self.prepare_dataset(x, batch_size or 2, flip_prob=0.0), None
        return keras.Model.evaluate(self, x, y, batch_size=batch_size, **kwargs)

    def preprocess_samples(self, x, y=None, sample_weight=None):
        """No keras-hub preprocessing on ``fit``/``evaluate`` data: they take network inputs (or raw
        samples, prepared by ``prepare_dataset``); ``predict`` preprocesses inside its graph."""
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """ATSS targets + QFL/DFL/GIoU (the official sum). Logs ``qfl``, ``dfl``, ``giou``.

        Args:
            x: the normalised, padded input batch ``[B, H, W, 3]`` (static ``H``, ``W``).
            y: ``{"boxes": [B, M, 4] in bounding_box_format of the input batch (``rel_*``:
                relative to its ``H``, ``W``), "labels": [B, M] int (-1 = padding),
                "image_shape": optional [B, 2] per-image padded (h, w)}``. ``"classes"`` is
                accepted instead of ``"labels"`` (keras-cv data); giving both is an error.
            y_pred: the output of ``call``.
            sample_weight: not supported (the loss has its own per-point weights); must be None.

        Returns:
            The scalar loss *of this replica*, scaled for Keras' cross-replica gradient sum.
            Under a ``tf.distribute`` strategy with ``R`` replicas Keras sums the replicas'
            gradients, and the official loss of the global batch is the mean of the replicas'
            losses (their normalisers are already replica means inside ``gfl_loss``), so the
            returned value is ``loss / R`` (as Keras' own ``compute_loss`` does with
            ``scale_loss_for_distribution``). The logged ``loss``/``qfl``/``dfl``/``giou`` are unscaled,
            so they read the same with any number of replicas.
        """
        from gflv2_keras.losses.gfl_loss import gfl_loss, scale_for_replicas, valid_point_mask

        del training
        if sample_weight is not None:
            raise ValueError("GFLV2Detector.compute_loss: sample_weight is not supported, pass None")
        if y_pred is None:
            y_pred = self(x, training=True)
        height, width = _static_hw(x)
        if not (isinstance(height, int) and isinstance(width, int)):
            raise ValueError(
                f"GFLV2Detector.compute_loss: the input height and width must be static, got {x.shape}; "
                "pad training batches to a fixed size (gflv2_keras.data.canvas.pad_to_canvas)"
            )
        sizes, points, point_strides = self.points_for(height, width)
        gt_labels = ops.cast(target_labels(y), "int32")
        gt_boxes = convert_boxes(y["boxes"], self.bounding_box_format, "xyxy", height, width)
        batch = ops.shape(gt_labels)[0]
        image_shapes = y.get("image_shape")
        if image_shapes is None:
            image_shapes = ops.tile(ops.convert_to_tensor([[height, width]], "int32"), [batch, 1])
        valid = valid_point_mask(sizes, self.strides, image_shapes)
        losses = gfl_loss(
            ops.cast(y_pred["confidence"], "float32"),
            ops.cast(y_pred["box_logits"], "float32"),
            points,
            point_strides,
            [h * w for h, w in sizes],
            gt_boxes,
            gt_labels,
            valid,
            num_classes=self.num_classes,
            reg_max=self.reg_max,
            loss_weights=tuple(self.train_config["loss_weights"]),
            topk=int(self.train_config["topk"]),
        )
        for name in LOSS_NAMES:
            self.loss_component_trackers[name].update_state(losses[name])
        total = losses["qfl"] + losses["dfl"] + losses["giou"]
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses]))
        return scale_for_replicas(total)

    def make_train_function(self, force=False):
        """On TensorFlow, the detector's own training function (``models.train_function``): the
        batch is taken from the iterator eagerly and the step is traced once per batch shape
        (ATSS and XLA need static heights and widths), with gradient accumulation when
        ``accumulate_steps > 1``. On JAX and PyTorch, Keras' own (shapes are static there;
        accumulation through the optimizer's ``gradient_accumulation_steps``)."""
        if keras.config.backend() != "tensorflow":
            return super().make_train_function(force)
        from gflv2_keras.models.train_function import make_train_function

        return make_train_function(self, force)

    @property
    def metrics(self):
        # Keras already collects metrics assigned to the model; add ours only if it did not.
        metrics = super().metrics
        return metrics + [m for m in self.loss_component_trackers.values() if all(m is not n for n in metrics)]

    # ------------------------------------------------------------------ inference
    def predict_step(self, data):
        """uint8 RGB ``[B, H, W, 3]`` (one size) → padded detections of the original images."""
        images = data[0] if isinstance(data, (tuple, list)) else data
        return self.detect_batch(images, return_box_distributions=self.predict_box_distributions)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, return_box_distributions=False):
        """``keras.Model.predict``; images given as arrays take the compiled path of ``detect``.

        Args:
            x: uint8 RGB images: a ``[B, H, W, 3]`` array or tensor of one size, or a list of
                ``[H, W, 3]`` arrays of any sizes (run image by image); or a ``tf.data.Dataset``
                / generator, which goes through Keras' own loop. Arrays that are not uint8 RGB
                (float pixels, one image without its batch axis, 4 channels, an empty batch)
                raise a ``ValueError`` saying what is expected.
            batch_size: images per compiled call for a ``[B, H, W, 3]`` array (default 32).
            return_box_distributions: also return the per-detection classification, quality and
                side-distribution statistics of ``detect_batch`` (computed after NMS).

        Returns:
            NumPy ``{"boxes" [B, K, 4] float32, "confidence" [B, K] float32, "labels" [B, K]
            int32, "num_detections" [B] int32}``, rows past ``num_detections`` -1, boxes in the
            detector's ``bounding_box_format`` of each original image.
        """
        if isinstance(x, (list, tuple)) and x and all(is_array(item) for item in x):
            images = [validate_image(item, f"x[{i}]") for i, item in enumerate(x)]
            parts = [self._predict_array(image[None], 1, return_box_distributions) for image in images]
            return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        if steps is None and callbacks is None and is_array(x):
            return self._predict_array(validate_batch(x), batch_size or 32, return_box_distributions)
        if bool(return_box_distributions) != self.predict_box_distributions:
            self.predict_box_distributions = bool(return_box_distributions)
            self.predict_function = None  # Keras caches the traced predict_step
        return keras.Model.predict(self, x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks)

    def _predict_array(self, images, batch_size, return_box_distributions=False):
        """uint8 ``[B, H, W, 3]`` through the per-canvas compiled function, ``batch_size`` at a time."""
        canvas = canvas_size(int(images.shape[1]), int(images.shape[2]), self.input_scale)
        parts = [
            self._inference_functions(
                images[i : i + batch_size], canvas, self.bounding_box_format, return_box_distributions
            )
            for i in range(0, int(images.shape[0]), batch_size)
        ]
        return {key: np.concatenate([np.asarray(part[key]) for part in parts]) for key in parts[0]}

    def detect_batch(self, images, bounding_box_format=None, canvas=None, return_box_distributions=False, network=None):
        """Preprocess, run and post-process a batch of equally sized uint8 ``[B, H, W, 3]`` images
        (graph-safe): ``models.detection_graph.detect_batch``, whose docstring states the arguments
        and the outputs."""
        from gflv2_keras.models.detection_graph import detect_batch

        return detect_batch(self, images, bounding_box_format, canvas, return_box_distributions, network)

    @property
    def _inference_functions(self):
        if getattr(self, "_inference_cache", None) is None:
            object.__setattr__(self, "_inference_cache", inference_runner(self))
        return self._inference_cache

    def fuse_for_inference(self, enabled=True):
        """Fold every frozen BatchNorm of the backbone into its preceding convolution.

        Exact up to float rounding (frozen statistics, the official ``norm_eval``); the weights
        are not changed (the fold is computed from them at call time), so saving and training
        are unaffected, but the model's ``call`` then skips the separate normalisation.
        ``detect``/``predict`` already fold inside their compiled functions. ``enabled=False``
        unfolds. Returns the number of folded pairs.
        """
        pairs = foldable_pairs(self)
        for conv, norm in pairs:
            conv.fold_norm(norm if enabled else None)
        return len(pairs) if enabled else 0

    def detect(self, image, bounding_box_format=None, return_box_distributions=False):
        """Detect objects in one image.

        Args:
            image: uint8 RGB ``[H, W, 3]`` NumPy array (any size).
            bounding_box_format: format of the returned boxes (``None``: the detector's).
            return_box_distributions: also return the extra keys of ``detect_batch``.

        Returns:
            ``{"boxes": [K, 4] float32 of the original image, "confidence": [K] float32,
            "labels": [K] int32}`` NumPy (the dtypes of ``predict``). One compiled function
            per network canvas (``models.fast_inference``).
            With ``return_box_distributions``, also the extra keys of ``detect_batch`` without
            the batch axis (``"side_std": [K, 4]``, ...).
        """
        image = validate_image(image)
        fmt = self.bounding_box_format if bounding_box_format is None else validate_bounding_box_format(
            bounding_box_format
        )
        canvas = canvas_size(image.shape[0], image.shape[1], self.input_scale)
        found = self._inference_functions(image[None], canvas, fmt, return_box_distributions)
        out = {k: np.asarray(v) for k, v in found.items()}
        count = int(out.pop("num_detections")[0])
        return {k: v[0, :count] for k, v in out.items()}

    def compile_for_inference(self, runtime="auto", precision="float32", **options):
        """This detector's ``detect`` in another runtime / precision, or the fastest one (``runtime="auto"``).

        ``runtime``: ``"auto"``, ``"tf"``, ``"onnxruntime"``, ``"openvino"``, ``"litert"``;
        ``precision``: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"int8"`` (with
        ``calibration_data=PATH``). Exports are made once per model into a cache and ``auto``'s
        measured choice is kept per machine; ``options`` and the returned ``CompiledDetector``
        (``detect`` like this one, ``runtime``, ``precision``, ``reason``):
        ``gflv2_keras.inference.runtime_choice.compile_for_inference``, ``docs/runtimes.md``.
        """
        from gflv2_keras.inference.runtime_choice import compile_for_inference

        return compile_for_inference(self, runtime=runtime, precision=precision, **options)

    def export(self, filepath, format="tf_saved_model", verbose=True, input_signature=None, **kwargs):
        """Keras' ``Model.export`` of ``call`` (raw outputs) at ANY image size
        (``gflv2_keras.export.keras_export``: float32 ``[None, None, None, 3]`` by default).

        For detections (NMS inside, uint8 or encoded images in, TF Serving signatures) use
        ``gflv2 export`` / ``gflv2_keras.export.export_saved_model``.
        """
        from gflv2_keras.export.archive import keras_export

        return keras_export(self, filepath, format=format, input_signature=input_signature, verbose=verbose, **kwargs)

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, preset, load_weights=True, **overrides):
        """A detector from a preset: a name (``gflv2_keras.presets.list_presets()``), a preset
        folder (keras-hub layout, or the layout before it), or a keras-hub handle
        (``hf://user/model``, ``kaggle://user/model/keras/variant``).

        ``overrides`` are constructor arguments (``bounding_box_format``, ``test_config``,
        ``dtype``, ...). ``class_names`` / ``num_classes`` that differ from the preset's start a
        detector for those classes, as fine-tuning does: every weight is loaded, the classifier
        rows matched by class name (reordered), new names at the official initialisation
        (``models.transfer.with_class_names``). See ``models.preset_io.load_detector``.
        """
        from gflv2_keras.models.preset_io import load_detector

        return load_detector(cls, preset, load_weights=load_weights, **overrides)

    def save_to_preset(self, directory, metadata=None, overwrite=False, max_shard_size=10):
        """Write a keras-hub preset folder (``config.json``, ``model.weights.h5``, ``task.json``,
        ``task.weights.h5``, ``preprocessor.json``, ``metadata.json``) at the new path ``directory``.

        ``metadata`` (provenance, metrics) is added to keras-hub's ``metadata.json``. An existing
        folder is replaced only with ``overwrite=True`` (``FileExistsError`` otherwise).
        """
        from gflv2_keras.models.preset_io import save_detector

        save_detector(self, directory, metadata=metadata, overwrite=overwrite, max_shard_size=max_shard_size)

    def build_for_inference(self, size=(64, 64)):
        """Create all weights by running one small forward pass; returns ``self``."""
        self(ops.zeros((1, size[0], size[1], 3)), training=False)
        return self

    def count_params_official(self):
        """Parameters as the official count: weights, biases, norm affines (not BN running stats)."""
        return int(
            sum(
                np.prod(w.shape)
                for w in self.weights
                if not (w.path.endswith("moving_mean") or w.path.endswith("moving_variance"))
            )
        )

    def get_config(self):
        return {
            **super().get_config(),  # backbone and preprocessor, serialised (keras-hub Task)
            "num_classes": self.num_classes,
            "head": self.head_config,
            "test_config": self.test_config,
            "train_config": self.train_config,
            "class_names": self.class_names,
            "bounding_box_format": self.bounding_box_format,
            "inference_jit": self.inference_jit,
        }


# The name of the layout before keras-hub: one class, so old ``.keras`` files and code keep working.
GFLV2Detector = GFLV2ObjectDetector
keras.saving.get_custom_objects()["gflv2_keras>GFLV2Detector"] = GFLV2ObjectDetector


def target_labels(y):
    """The class ids of training targets: ``y["labels"]``, or ``y["classes"]`` (keras-cv)."""
    if not isinstance(y, dict):
        raise ValueError(f"GFLV2Detector: training targets must be a dict with 'boxes' and 'labels', got {type(y)}")
    if "labels" in y and "classes" in y:
        raise ValueError("GFLV2Detector: training targets have both 'labels' and 'classes'; give only 'labels'")
    if "labels" in y:
        return y["labels"]
    if "classes" in y:
        return y["classes"]
    raise ValueError(f"GFLV2Detector: training targets have no 'labels' (keys: {sorted(y)})")


def _static_hw(images):
    """``(H, W)`` of an NHWC batch: python ints when static, else scalar tensors."""
    shape = ops.shape(images)
    return shape[1], shape[2]


