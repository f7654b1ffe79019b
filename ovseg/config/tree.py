"""The configuration tree: frozen dataclasses whose defaults are the paper's ViT-B/16 model.

OVSegmentor, CVPR 2023; reference: ovsegmentor.md sections 2, 4, 6, 7. A named configuration in
``ovseg/configs/`` holds only what differs from these defaults. Beside each field: what it allows
(``positive``, ``at_least``, ``unit``, ``choice``... in rules.py), checked whenever a section is built; a
section's ``check_together`` states the constraints between its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .rules import Checked, ConfigError, at_least, between, choice, positive, text, unit

# the allowed values of the enumerated keys; consumers import these (or a test checks theirs are equal)
STEMS = ("patch", "conv")
POOLINGS = ("cls", "mean", "eot")  # models/text.py
TEXT_KINDS = ("bert", "clip")  # models/text.py
ACTIVATIONS = ("gelu", "quick_gelu")  # models/vision.py, models/text.py
VISION_SOURCES = ("auto", "vit", "dinov2", "clip")  # models/pretrained.py SOURCES
ASSIGNMENTS = ("hard", "soft")
MOSAIC_LAYOUTS = ("paste", "side")  # models/mosaic.py LAYOUTS
BACKGROUNDS = ("cluttered", "smooth")  # data/synthetic/shapes.py BACKGROUNDS
AUGMENTS = ("paper", "light", "flip")  # data/captions/transforms.py AUGMENTS
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedtrimmedavg", "fedmedian", "krum", "multikrum", "bulyan")  # integrations/flower/strategy.py
TRANSPORTS = ("float32", "bfloat16")  # federated/wire.py TRANSPORTS
DP_MODES = ("server", "client")
EVAL_PROTOCOLS = ("groupvit", "tcl")  # eval/protocols.py PROTOCOLS


@dataclass(frozen=True)
class VisionConfig(Checked):
    """GroupViT vision tower. One entry per stage in the tuples; a grouping block ends every stage but the last."""

    KEY: ClassVar[str] = "model.vision"

    img_size: int = positive(224)
    patch_size: int = positive(16)
    embed_dim: int = positive(768)
    depths: tuple[int, ...] = at_least(0, (6, 6))  # layers per stage; a stage may have none
    num_heads: tuple[int, ...] = positive((8, 8))  # the released configs use 8 heads on DINO's 12-head weights
    num_group_tokens: tuple[int, ...] = at_least(0, (64, 0))  # learnable tokens carried through each stage
    num_output_groups: tuple[int, ...] = positive((8,))  # slots after each grouping block
    mlp_ratio: float = positive(4.0)
    qkv_bias: bool = True
    drop_path_rate: float = between(0.0, 1.0, 0.1, hi_open=True)
    patch_norm: bool = False
    # "patch": ViT's linear patch embedding (the paper). "conv": a convolutional stem (3x3 stride-2 conv +
    # BatchNorm + ReLU, log2(patch_size) times, then a 1x1 projection; Xiao et al. 2021, "Early convolutions
    # help transformers see better") that yields the same token grid. For small models trained from scratch.
    stem: str = choice("patch", STEMS)
    hard_assignment: bool = True  # one-hot assignment (straight-through gradients) in training
    # Gumbel noise on the assignment logits in training (GroupViT's default). False: the noise-free argmax,
    # as at inference (GroupViT's AssignAttention has the same switch)
    gumbel: bool = True
    gumbel_tau: float = positive(1.0)
    # GroupViT adds each group's query (cross-attended over the whole image) to the mean of the tokens it was
    # assigned; False keeps only the assigned tokens, so a group cannot carry what lies outside its segment
    group_residual: bool = True
    # in training, the probability per image that the group residual is left out (its groups are built from
    # their assigned tokens alone): a group's meaning must then come from the tokens it lies on
    group_residual_drop: float = between(0.0, 1.0, 0.0, hi_open=True)
    # a LayerNorm on each group's pooled tokens before the residual is added. The residual leaves a post-norm
    # cross-attention (norm about sqrt(width)) while the pooled tokens start near zero and stay small (14-23 %
    # of the residual's norm at step 400 of tiny with the frozen MiniLM and 4 groups): a group's meaning then comes from its image-wide query, not
    # from the tokens it is assigned, which are what zero-shot segmentation reads
    pooled_norm: bool = False
    # subtract the image's mean key from every token's key before the assignment logits (per group, a constant
    # over the image's tokens): groups compete on what tells tokens apart, not on what the image shares
    center_keys: bool = False
    assign_eps: float = positive(1.0)  # eps = 1 makes the assignment a mean pool (GroupViT#17: small eps is unstable)
    norm_eps: float = positive(1e-5)
    # A local file or folder of pretrained weights (docs/pretrained.md): a DINO / timm ViT or DINOv2 checkpoint
    # (.pth / .bin / .safetensors), an OpenCLIP file (or its folder), a Hugging Face CLIP folder. Never downloaded.
    pretrained: str | None = text()
    # What ``pretrained`` must hold. "auto": whatever its keys show, and it may be absent (random init). "vit",
    # "dinov2", "clip": that kind, and it is required (a named config that starts from it says so; building the
    # model without it is an error naming this key)
    pretrained_kind: str = choice("auto", VISION_SOURCES)
    # Architecture options of pretrained ViTs, each off by default (the paper's DINO blocks have none):
    pre_norm: bool = False  # a LayerNorm on the embedded tokens before the first block (CLIP's ln_pre)
    act: str = choice("gelu", ACTIVATIONS)  # the blocks' MLP activation; OpenAI's CLIP was trained with quick_gelu
    # LayerScale (a learned per-channel scale on each residual branch, Touvron et al. 2021) in every ViT block of
    # the stages, starting at this value; DINOv2 has it (its 1e-5 initial value; loaded weights replace it)
    layer_scale: float | None = positive(None)
    # learned register tokens (Darcet et al. 2024, DINOv2 with registers) that join every block of every stage and
    # are never grouped; a file's registers load when the counts match, and are dropped (unused) when this is 0
    num_registers: int = at_least(0, 0)

    def check_together(self) -> None:
        n = len(self.depths)
        if n < 2:
            raise ConfigError(f"config key 'model.vision.depths' needs at least 2 stages (a grouping block ends "
                              f"every stage but the last), got {list(self.depths)}")
        for name in ("num_heads", "num_group_tokens"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"config key 'model.vision.{name}' needs one entry per stage ({n}, as "
                                  f"model.vision.depths), got {list(getattr(self, name))}")
        if len(self.num_output_groups) != n - 1:
            raise ConfigError(f"config key 'model.vision.num_output_groups' needs one entry per grouping block "
                              f"({n - 1}: stages - 1), got {list(self.num_output_groups)}")
        if self.num_group_tokens[-1] != 0 or 0 in self.num_group_tokens[:-1]:
            raise ConfigError(f"config key 'model.vision.num_group_tokens' must be > 0 for every stage but the "
                              f"last and 0 for the last, got {list(self.num_group_tokens)}")
        if self.img_size % self.patch_size:
            raise ConfigError(f"config key 'model.vision.img_size' ({self.img_size}) must be a multiple of "
                              f"model.vision.patch_size ({self.patch_size})")
        if any(self.embed_dim % h for h in self.num_heads):
            raise ConfigError(f"config key 'model.vision.embed_dim' ({self.embed_dim}) must be divisible by every "
                              f"entry of model.vision.num_heads {list(self.num_heads)}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError(f"config key 'model.vision.patch_size' must be a power of two >= 2 with "
                              f"model.vision.stem=conv, got {self.patch_size}")
        if self.pretrained_kind != "auto" and self.stem != "patch":
            raise ConfigError(f"config key 'model.vision.pretrained_kind' ({self.pretrained_kind}) needs the ViT "
                              f"patch embedding (model.vision.stem=patch), got stem {self.stem!r}")


@dataclass(frozen=True)
class TextConfig(Checked):
    """The text tower: loaded from a local directory (or file), or built with random weights from these sizes."""

    KEY: ClassVar[str] = "model.text"

    # "bert": any BERT-family Hugging Face encoder (the paper: bert-base-uncased). "clip": CLIP's causal text
    # transformer with its own BPE tokenizer, pooled at the end-of-text token (docs/pretrained.md)
    kind: str = choice("bert", TEXT_KINDS)
    # local Hugging Face model dir; "builtin:minilm" = the packaged MiniLM-L6. With kind=clip: a Hugging Face CLIP
    # folder, or an OpenCLIP .bin/.safetensors file (or its folder)
    pretrained_dir: str | None = text()
    # defaults to pretrained_dir, else the packaged BERT uncased vocabulary. kind=clip: a folder with CLIP's
    # vocab.json and merges.txt (a Hugging Face CLIP folder has them); required when pretrained_dir is an OpenCLIP
    # file or absent. Nothing is downloaded
    tokenizer_dir: str | None = text()
    # building the model without pretrained_dir is an error naming this key, not a random tower (named configs
    # that start from pretrained text weights set it)
    pretrained_required: bool = False
    width: int = positive(768)
    depth: int = positive(12)
    num_heads: int = positive(12)
    mlp_dim: int = positive(3072)
    max_length: int = at_least(2, 77)  # [CLS] and [SEP] at least
    # dropout inside the tower (hidden and attention); None keeps the model's own (BERT: 0.1). A randomly
    # initialised tower's outputs barely differ between texts at first, and 0.1 dropout noise drowns that
    # difference: the tiny config trains its random tower with 0.
    dropout: float | None = between(0.0, 1.0, None, hi_open=True)
    # "cls": the last hidden state at [CLS] (the paper). "mean": the mean over real tokens ([CLS] and [SEP]
    # included), the pooling sentence-transformers trains MiniLM with: a pretrained MiniLM's [CLS] state was
    # never trained to stand for the sentence. "eot": the last real token (BERT's [SEP], CLIP's end-of-text
    # token, where CLIP pools; kind=clip needs "eot" or "mean": its causal first token sees only itself)
    pooling: str = choice("cls", POOLINGS)
    # the activation of a tower built from sizes (a random one, or CLIP's from an OpenCLIP file, which does not
    # say); a Hugging Face folder brings its own. OpenAI's CLIP weights: quick_gelu
    act: str = choice("gelu", ACTIVATIONS)
    # keep the tower's weights fixed in stage 1 as well (stage 2 always freezes them; its projector trains)
    freeze: bool = False
    # a frozen tower's features come from a cache keyed by token ids and the tower's fingerprint
    # (ovseg.models.textcache); False recomputes them every step
    cache: bool = True
    cache_rows: int = at_least(0, 100_000)  # distinct texts the cache keeps; further ones are computed every time
    # a trainable linear map of the tower's outputs (pooled and token features, after the cache) to this width;
    # the text projectors and the entity decoder then work at it. None: the tower's own width. A narrow head
    # over a frozen pretrained tower keeps the decoder as cheap as a small random tower's (tiny: 384 -> 128)
    head_dim: int | None = positive(None)

    def check_together(self) -> None:
        if self.pretrained_dir is None and self.width % self.num_heads:  # a pretrained tower brings its own sizes
            raise ConfigError(f"config key 'model.text.width' ({self.width}) must be divisible by "
                              f"model.text.num_heads ({self.num_heads})")
        if self.kind == "clip" and self.pooling == "cls":
            raise ConfigError("config key 'model.text.pooling' must be 'eot' (or 'mean') with model.text.kind=clip: "
                              "CLIP's causal first token sees only itself")


@dataclass(frozen=True)
class ModelConfig(Checked):
    KEY: ClassVar[str] = "model"

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = positive(256)  # joint embedding size
    proj_hidden_dim: int = positive(4096)
    proj_num_layers: int = positive(2)
    decoder_heads: int = positive(8)  # masked-entity-completion decoder
    decoder_depth: int = positive(1)
    logit_scale_init: float = positive(0.07)  # temperature; the scale exp(tau) is capped at logit_scale_max
    logit_scale_max: float = positive(100.0)
    momentum: float = unit(0.99)  # EMA of the image encoder for cross-image mask consistency (stage 2)
    # How the class-name prompts of a training batch (the multi-label and supervised mask terms) pass the text
    # projector's BatchNorm: "batch" normalises the batch's few, near-identical prompts by their own statistics
    # (and moves the running ones toward them); "running" uses the running statistics, as zero-shot evaluation
    # does, so the class embeddings a loss trains are the ones evaluation reads
    class_prompt_norms: str = choice("batch", ("batch", "running"))

    def check_together(self) -> None:
        # the entity decoder works at the text features' width: text.head_dim, else a random tower's width
        width = self.text.head_dim or (self.text.width if self.text.pretrained_dir is None else None)
        if width is not None and width % self.decoder_heads:
            raise ConfigError(f"config key 'model.decoder_heads' ({self.decoder_heads}) must divide the text "
                              f"features' width ({width}: model.text.head_dim, else model.text.width)")


@dataclass(frozen=True)
class LossConfig(Checked):
    KEY: ClassVar[str] = "loss"

    contrast_weight: float = at_least(0.0, 1.0)
    entity_weight: float = at_least(0.0, 1.0)
    mask_weight: float = at_least(0.0, 0.1)  # applies in stage 2, where batches carry paired images
    mask_threshold: float = unit(0.6)  # binarise sigmoid targets at this fraction of each mask's max
    group_ratio: float = unit(0.5)  # this fraction of groups (the least entity-relevant) gets no mask gradient
    mask_size: int = positive(224)  # masks are compared at this resolution
    seg_weight: float = at_least(0.0, 1.0)  # supervised mask loss on segmentation data (cross-entropy + Dice)
    # ... plus, on its background pixels, -log(1 - the best class probability) of the pixel's groups over the
    # named classes: zero-shot evaluation finds background by that probability falling below a threshold,
    # not by a "background" prompt (losses.supervised_mask_loss)
    seg_background_weight: float = at_least(0.0, 1.0)
    # which assignment the supervised loss reads pixels' groups from: "hard" (the one-hot each patch's group is
    # pooled with; straight-through gradients), as zero-shot evaluation reads each pixel's single best group,
    # or "soft" (the softmax over groups: every group is pulled towards every pixel's class)
    seg_assignment: str = choice("hard", ASSIGNMENTS)
    # GroupViT's multi-label contrast of each image's best group with prompts of its caption's entities
    # (losses.multilabel_group_loss). Not part of OVSegmentor: 0 reproduces the paper.
    multilabel_weight: float = at_least(0.0, 0.0)
    # mean cosine between the projected embeddings of an image's groups, penalised (losses.group_diversity_loss).
    # Not part of OVSegmentor: 0 reproduces the paper.
    group_diversity_weight: float = at_least(0.0, 0.0)
    # each caption entity's prompt contrasted against every group of the batch, its images' best groups the
    # positives and the same image's other groups negatives (losses.entity_group_loss). Not part of
    # OVSegmentor: 0 reproduces the paper.
    entity_group_weight: float = at_least(0.0, 0.0)
    # localisation from captions alone: mosaics of two of the batch's images (one at half size pasted over the
    # other at a random place: "paste"; both at half size side by side: "side"); the patches of each image,
    # scored through their groups, must name its entities and not the other's (losses.mosaic_loss,
    # models/mosaic.py). Not part of OVSegmentor: 0 reproduces the paper.
    mosaic_weight: float = at_least(0.0, 0.0)
    mosaic_layout: str = choice("paste", MOSAIC_LAYOUTS)
    # KL from uniform of each image's group shares (losses.group_usage_loss): no group may take the whole
    # image. Not part of OVSegmentor: 0 reproduces the paper.
    group_usage_weight: float = at_least(0.0, 0.0)
    # which assignment the shares are read from: "soft" (the softmax over groups; diffuse assignments can make
    # it even) or "hard" (the one-hot the groups are pooled with, straight-through gradients). Soft learned
    # better on 2 of 3 seeds at step 400 (docs/results.md, 1 Dec 2026, evening)
    group_usage_on: str = choice("soft", ASSIGNMENTS)
    # mean entropy over the groups of each patch's soft assignment, / log G (losses.group_confidence_loss): every
    # patch decides on a group, so the training assignment (hard, with Gumbel noise) is the evaluation's argmax and
    # not a random draw among groups whose logits tie. Not part of OVSegmentor: 0 reproduces the paper.
    group_confidence_weight: float = at_least(0.0, 0.0)

    @property
    def needs_entity_prompts(self) -> bool:
        """Whether batches must carry the prompts of their captions' entities (``class_ids``/``entity_targets``)."""
        return self.multilabel_weight > 0 or self.entity_group_weight > 0 or self.mosaic_weight > 0


@dataclass(frozen=True)
class EvalConfig(Checked):
    """Zero-shot segmentation protocol: a named one (``protocol``, ovseg/eval/protocols.py) and the values that
    override it. Every key below left None takes the protocol's value for the dataset scored."""

    KEY: ClassVar[str] = "eval"

    # "groupvit": GroupViT/OVSegmentor's (the paper's numbers); "tcl": TCL's, the eight-benchmark table's
    protocol: str = choice("groupvit", EVAL_PROTOCOLS)
    # pixel-adaptive mask refinement of the class scores (Araslanov and Roth 2020; ovseg/eval/pamr.py)
    pamr: bool = False
    templates: tuple[str, ...] | None = text(None, contains="{}")  # "{}": the class name; None: the protocol's
    short_side: int | None = positive(None)  # None: the protocol's (448)
    # ... and the long side at most this: MMSegmentation's keep-ratio Resize with img_scale=(2048, 448), as the
    # released dataset configs give it (it only matters for images wider than 2048 / 448 = 4.6 : 1); None: the
    # protocol's (2048); 0: no cap
    long_side: int | None = at_least(0, None)
    crop_size: int | None = positive(None)  # None: the protocol's (448)
    stride: int | None = positive(None)  # at most crop_size: windows must cover the image; None: the protocol's (224)
    # None: the protocol's: groupvit each dataset's (VOC 0.95, Context 0.35, COCO 0.9), tcl 0.5 (0.4 with pamr)
    bg_thresh: float | None = unit(None)
    top_k: int | None = positive(None)  # the image-level class filter of the group scores; None: the protocol's (5)
    # sliding windows sent through the model at once: bounds the memory of one image, whatever its shape (a
    # panorama has thousands of windows); the scores do not depend on it
    window_batch: int = positive(16)
    # evaluation sets: "name=/path" (voc, context60, context59, coco_object, ade20k, synthetic); a bare
    # "synthetic" is the embedded synthetic world's val split
    datasets: tuple[str, ...] = text(("synthetic",), nonempty=True)
    # score a dataset under other class names: "name=FILE" (a YAML/JSON mapping canonical -> new name, or one
    # name per line in class order); it is logged as <name>-<file stem>, next to the canonical scores
    class_names: tuple[str, ...] = text((), nonempty=True)
    max_images: int | None = positive(None)  # evaluate on the first N images only (None: all)
    num_overlays: int = at_least(0, 4)

    def check_together(self) -> None:
        if self.templates is not None and not self.templates:
            raise ConfigError("config key 'eval.templates' needs at least one prompt template, got []")
        if self.stride is not None and self.crop_size is not None and self.stride > self.crop_size:
            raise ConfigError(f"config key 'eval.stride' ({self.stride}) must be at most eval.crop_size "
                              f"({self.crop_size}): the windows must cover the image")
        from ..eval.protocols import resolve  # the protocols' table (torch-free); here, not at import: no cycle

        read = resolve(self, check_values=False)
        if read.stride > read.crop_size:
            raise ConfigError(f"config keys 'eval.stride' and 'eval.crop_size': with the {self.protocol} "
                              f"protocol's values for the keys not set they are {read.stride} and "
                              f"{read.crop_size}; the stride must be at most the window: set both")


@dataclass(frozen=True)
class DataConfig(Checked):
    """Caption shards (img2dataset webdataset layout); with none given, the generated synthetic world."""

    KEY: ClassVar[str] = "data"

    # shard paths or brace patterns, e.g. /data/cc4m/{00000..01242}.tar
    train: tuple[str, ...] = text((), nonempty=True)
    synthetic_dir: str | None = text()  # default: ~/.cache/ovseg/synthetic/<seed>-<sizes>
    synthetic_seed: int = at_least(0, 0)
    synthetic_train: int = positive(20000)
    synthetic_val: int = positive(500)
    synthetic_seg: int = at_least(0, 2000)
    # "smooth": no pixel noise, no lines (ovseg.data.synthetic.scene)
    synthetic_background: str = choice("cluttered", BACKGROUNDS)
    # object diameters as a fraction of the image side (min at most max)
    synthetic_min_scale: float = between(0.0, 1.5, 0.3, lo_open=True)
    synthetic_max_scale: float = between(0.0, 1.5, 0.6, lo_open=True)
    synthetic_max_objects: int = positive(4)  # objects per image: 1 to this many
    loader_workers: int = at_least(0, 2)  # DataLoader processes per training worker
    shuffle_buffer: int = at_least(0, 2000)  # 0 or 1: no shuffling
    # batches per epoch per rank; default: real shards' own counts (summary.json / *_stats.json; an error when
    # a shard has none), the synthetic world's synthetic_train / global batch
    epoch_length: int | None = positive(None)
    # "paper": stage 1 RandAugment + erasing + crop 0.08-1, stage 2 crop 0.4-1 + flip; "light": crop 0.4-1 + flip
    # in both stages; "flip": a horizontal flip only (small synthetic images: a crop can cut out a named object)
    augment: str = choice("paper", AUGMENTS)
    # where a frozen text tower's feature cache is kept (one file per tower fingerprint; ovseg.models.textcache).
    # Default: next to the data: <world>/text-cache for the synthetic world, else ~/.cache/ovseg/text-cache
    text_cache_dir: str | None = text()

    def check_together(self) -> None:
        if self.synthetic_min_scale > self.synthetic_max_scale:
            raise ConfigError(f"config key 'data.synthetic_min_scale' ({self.synthetic_min_scale}) must be at most "
                              f"data.synthetic_max_scale ({self.synthetic_max_scale})")


@dataclass(frozen=True)
class TrainConfig(Checked):
    """Optimiser, schedule and scale (reference section 6). Learning rates are for a global batch of
    ``lr_batch`` and scale linearly with the actual global batch, as in the released code."""

    KEY: ClassVar[str] = "train"

    batch_size: int = positive(256)  # per training worker
    num_workers: int = positive(8)  # Ray Train workers (DDP ranks)
    use_gpu: bool = True
    cpus_per_worker: int = positive(4)
    stage1_steps: int = at_least(0, 58600)  # 30 epochs of ~4M captions at a global batch of 2048
    stage2_steps: int = at_least(0, 39000)  # 10 epochs at a global batch of 1024 (stage 2 halves the per-GPU batch)
    stage2_batch_size: int | None = positive(128)  # None: batch_size
    lr: float = at_least(0.0, 6.4e-4)
    warmup_lr: float = at_least(0.0, 1.6e-5)
    min_lr: float = at_least(0.0, 1.6e-4)
    warmup_steps: int = at_least(0, 3900)
    stage2_lr: float = at_least(0.0, 1e-5)
    stage2_min_lr: float = at_least(0.0, 1e-6)
    lr_batch: int = positive(4096)
    weight_decay: float = at_least(0.0, 0.05)
    clip_grad: float = at_least(0.0, 5.0)  # the gradient norm bound; 0: not clipped
    bf16: bool = True  # autocast to bfloat16 on a GPU (the losses stay in float32)
    # autocast on CPU as well; only where the CPU computes bf16 natively (AVX512-BF16 or AMX), an error otherwise.
    # Off by default: the tiny recipe and every number in the README were measured in float32
    bf16_cpu: bool = False
    # AdamW's single-kernel implementation, on GPU and CPU (4.6x the for-loop one's update on a 2-core CPU at
    # ViT-S width); false: the for-loop one. They differ in the last bit, which is why `tiny` keeps the for-loop
    # one its measured numbers came from
    fused_adamw: bool = True
    # torch.compile the training forward with this backend ("inductor" on a GPU; "eager" only checks the wiring);
    # None: not compiled. Checkpoints and evaluation use the uncompiled module (the same parameters).
    compile: str | None = text(nonempty=True)
    log_every: int = positive(20)
    eval_every: int = positive(2000)
    ckpt_every: int = positive(1000)
    max_failures: int = at_least(-1, 2)  # Ray restarts of failed workers, from the latest checkpoint; -1: unlimited
    stop_after: int | None = positive(None)  # end this invocation at this global step (checkpointed); --resume goes on
    output_dir: str = text("runs", nonempty=True)
    run_name: str | None = text(nonempty=True)
    experiment: str = text("ovseg-pretrain", nonempty=True)

    def check_together(self) -> None:
        if self.stage1_steps + self.stage2_steps < 1:
            raise ConfigError("config keys 'train.stage1_steps' and 'train.stage2_steps' are both 0: "
                              "nothing would be trained")


@dataclass(frozen=True)
class DPConfig(Checked):
    """Differential privacy with Flower's clipping-and-noise wrappers (off when noise_multiplier is 0)."""

    KEY: ClassVar[str] = "fed.dp"

    # "server": the server clips each update; "client": sites clip (adds a client mod)
    mode: str = choice("server", DP_MODES)
    # Gaussian noise std = noise_multiplier * clipping_norm / sampled sites
    noise_multiplier: float = at_least(0.0, 0.0)
    clipping_norm: float = positive(1.0)  # L2 bound of one site's update (the model delta)
    # target delta of the (epsilon, delta) budget that is logged per round
    delta: float = between(0.0, 1.0, 1e-5, lo_open=True, hi_open=True)


@dataclass(frozen=True)
class FedConfig(Checked):
    """Federated hybrid training with Flower (clients/): the server's strategy and each site's local work."""

    KEY: ClassVar[str] = "fed"

    rounds: int = positive(10)
    local_steps: int = positive(20)  # optimiser steps per site per round
    local_batch: int = positive(32)
    lr: float = at_least(0.0, 1e-4)  # local AdamW learning rate (constant within a round)
    # Flower's strategies; the robust ones (fedtrimmedavg, fedmedian, krum, multikrum, bulyan) bound what a few
    # sites can do to the aggregate
    strategy: str = choice("fedavg", STRATEGIES)
    proximal_mu: float = at_least(0.0, 0.0)  # FedProx: mu / 2 * ||w - w_global||^2 added to the local loss
    server_lr: float = positive(1e-2)  # FedAdam's eta
    trim_beta: float = between(0.0, 0.5, 0.2, hi_open=True)  # FedTrimmedAvg: fraction cut at each end
    num_malicious: int = at_least(0, 0)  # Krum, MultiKrum, Bulyan: the sites assumed Byzantine (f)
    krum_select: int = positive(1)  # MultiKrum: the updates averaged (m; 1 is Krum)
    train_text: bool = False  # the text tower stays frozen (and home) unless true
    # BatchNorm layers that normalise with their running statistics during a site's round (and are not
    # updated): module prefixes of the model, see OVSegmentor.set_frozen_norms
    frozen_norms: tuple[str, ...] = text(("text_projector",), nonempty=True)
    transport: str = choice("float32", TRANSPORTS)  # or "bfloat16": updates travel at half the bytes
    max_update_norm: float = positive(1e3)  # L2 norm of (update - global) beyond which an update is refused
    min_sites: int = positive(2)  # sites that must be connected before a round starts
    fraction_train: float = between(0.0, 1.0, 1.0, lo_open=True)
    fraction_evaluate: float = unit(1.0)  # 0: no federated evaluation
    round_timeout: float = positive(600.0)  # seconds a round waits for replies; late or failed sites are left out
    # a pretraining checkpoint to start from. The server reads it; the trainable tensors reach sites by message,
    # the frozen towers never travel: each site loads them from its own copy (node config base-checkpoint,
    # else this path), and a fingerprint check refuses a site whose copy differs.
    init_checkpoint: str | None = text()
    sites_dir: str | None = text()  # simulation: virtual node i trains on <sites_dir>/site-<i> (make_sites.py)
    # server checkpoints: <output_dir>/<run name>/round-XXXX.safetensors
    output_dir: str = text("runs/federated", nonempty=True)
    run_name: str = text("federation", nonempty=True)
    experiment: str = text("ovseg-federated", nonempty=True)
    dp: DPConfig = field(default_factory=DPConfig)
    # secure aggregation (Flower's SecAgg+, ovseg.integrations.flower.secagg): the server sees only the weighted
    # mean of the sites' updates. FedAvg, float32 transport and no DP only; the sites' own evaluation is skipped
    secagg: bool = False
    # each site's secrets are split among this fraction of the round's sites ...
    secagg_shares: float = between(0.0, 1.0, 1.0, lo_open=True)
    # ... of which this fraction (at least 2) rebuilds a dropped site's mask
    secagg_threshold: float = between(0.0, 1.0, 0.5, lo_open=True)
    secagg_clip: float = positive(8.0)  # each value of a site's update (its delta) is clipped to +- this before masking

    def check_together(self) -> None:
        if self.secagg and (self.strategy != "fedavg" or self.transport != "float32" or self.dp.noise_multiplier > 0):
            raise ConfigError("config key 'fed.secagg' needs fed.strategy=fedavg, fed.transport=float32 and no DP "
                              "(the server never sees one site's update, so it cannot clip, rank or trim them)")
        if self.dp.noise_multiplier > 0 and self.dp.mode == "client" and self.transport != "float32":
            raise ConfigError("config key 'fed.transport' must be float32 with client-side DP clipping "
                              f"(fed.dp.mode=client), got {self.transport!r}")


@dataclass(frozen=True)
class Config(Checked):
    name: str = text("vit-b16-cc4m", nonempty=True)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    seed: int = at_least(0, 0)
