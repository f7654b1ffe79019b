"""The configuration tree: frozen dataclasses whose defaults are the paper's ViT-B/16 model.

OVSegmentor, CVPR 2023; reference: ovsegmentor.md sections 2, 4, 6, 7. A named configuration in
``ovseg/configs/`` holds only what differs from these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VisionConfig:
    """GroupViT vision tower. One entry per stage in the tuples; a grouping block ends every stage but the last."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depths: tuple[int, ...] = (6, 6)
    num_heads: tuple[int, ...] = (8, 8)  # the released configs use 8 heads on DINO's 12-head weights
    num_group_tokens: tuple[int, ...] = (64, 0)  # learnable tokens carried through each stage
    num_output_groups: tuple[int, ...] = (8,)  # slots after each grouping block
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    patch_norm: bool = False
    # "patch": ViT's linear patch embedding (the paper). "conv": a convolutional stem (3x3 stride-2 conv +
    # BatchNorm + ReLU, log2(patch_size) times, then a 1x1 projection; Xiao et al. 2021, "Early convolutions
    # help transformers see better") that yields the same token grid. For small models trained from scratch.
    stem: str = "patch"
    hard_assignment: bool = True  # one-hot assignment (straight-through gradients) in training
    # Gumbel noise on the assignment logits in training (GroupViT's default). False: the noise-free argmax,
    # as at inference (GroupViT's AssignAttention has the same switch)
    gumbel: bool = True
    gumbel_tau: float = 1.0
    # GroupViT adds each group's query (cross-attended over the whole image) to the mean of the tokens it was
    # assigned; False keeps only the assigned tokens, so a group cannot carry what lies outside its segment
    group_residual: bool = True
    # subtract the image's mean key from every token's key before the assignment logits (per group, a constant
    # over the image's tokens): groups compete on what tells tokens apart, not on what the image shares
    center_keys: bool = False
    assign_eps: float = 1.0  # eps = 1 makes the assignment a mean pool (GroupViT#17: small eps is unstable)
    norm_eps: float = 1e-5
    pretrained: str | None = None  # local DINO / timm ViT checkpoint (.pth or .safetensors)


@dataclass(frozen=True)
class TextConfig:
    """A BERT-family text tower: loaded from a local directory, or built with random weights from these sizes."""

    pretrained_dir: str | None = None  # local Hugging Face model dir; "builtin:minilm" = the packaged MiniLM-L6
    tokenizer_dir: str | None = None  # defaults to pretrained_dir, else the packaged BERT uncased vocabulary
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_length: int = 77
    # dropout inside the tower (hidden and attention); None keeps the model's own (BERT: 0.1). A randomly
    # initialised tower's outputs barely differ between texts at first, and 0.1 dropout noise drowns that
    # difference: the tiny config trains its random tower with 0.
    dropout: float | None = None
    # "cls": the last hidden state at [CLS] (the paper). "mean": the mean over real tokens ([CLS] and [SEP]
    # included), the pooling sentence-transformers trains MiniLM with: a pretrained MiniLM's [CLS] state was
    # never trained to stand for the sentence
    pooling: str = "cls"
    # keep the tower's weights fixed in stage 1 as well (stage 2 always freezes them; its projector trains)
    freeze: bool = False
    # a frozen tower's features come from a cache keyed by token ids and the tower's fingerprint
    # (ovseg.models.textcache); False recomputes them every step
    cache: bool = True
    cache_rows: int = 100_000  # distinct texts the cache keeps; further ones are computed every time
    # a trainable linear map of the tower's outputs (pooled and token features, after the cache) to this width;
    # the text projectors and the entity decoder then work at it. None: the tower's own width. A narrow head
    # over a frozen pretrained tower keeps the decoder as cheap as a small random tower's (tiny: 384 -> 128)
    head_dim: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256  # joint embedding size
    proj_hidden_dim: int = 4096
    proj_num_layers: int = 2
    decoder_heads: int = 8  # masked-entity-completion decoder
    decoder_depth: int = 1
    logit_scale_init: float = 0.07  # temperature; the scale exp(tau) is capped at logit_scale_max
    logit_scale_max: float = 100.0
    momentum: float = 0.99  # EMA of the image encoder for cross-image mask consistency (stage 2)


@dataclass(frozen=True)
class LossConfig:
    contrast_weight: float = 1.0
    entity_weight: float = 1.0
    mask_weight: float = 0.1  # applies in stage 2, where batches carry paired images
    mask_threshold: float = 0.6  # binarise sigmoid targets at this fraction of each mask's max
    group_ratio: float = 0.5  # this fraction of groups (the least entity-relevant) gets no mask gradient
    mask_size: int = 224  # masks are compared at this resolution
    seg_weight: float = 1.0  # supervised mask loss on segmentation data (cross-entropy + Dice)
    # ... plus, on its background pixels, -log(1 - the best class probability) of the pixel's groups over the
    # named classes: zero-shot evaluation finds background by that probability falling below a threshold,
    # not by a "background" prompt (losses.supervised_mask_loss)
    seg_background_weight: float = 1.0
    # which assignment the supervised loss reads pixels' groups from: "hard" (the one-hot each patch's group is
    # pooled with; straight-through gradients), as zero-shot evaluation reads each pixel's single best group,
    # or "soft" (the softmax over groups: every group is pulled towards every pixel's class)
    seg_assignment: str = "hard"
    # GroupViT's multi-label contrast of each image's best group with prompts of its caption's entities
    # (losses.multilabel_group_loss). Not part of OVSegmentor: 0 reproduces the paper.
    multilabel_weight: float = 0.0
    # mean cosine between the projected embeddings of an image's groups, penalised (losses.group_diversity_loss).
    # Not part of OVSegmentor: 0 reproduces the paper.
    group_diversity_weight: float = 0.0
    # each caption entity's prompt contrasted against every group of the batch, its images' best groups the
    # positives and the same image's other groups negatives (losses.entity_group_loss). Not part of
    # OVSegmentor: 0 reproduces the paper.
    entity_group_weight: float = 0.0
    # localisation from captions alone: mosaics of two of the batch's images (one at half size pasted over the
    # other at a random place: "paste"; both at half size side by side: "side"); the patches of each image,
    # scored through their groups, must name its entities and not the other's (losses.mosaic_loss,
    # models/mosaic.py). Not part of OVSegmentor: 0 reproduces the paper.
    mosaic_weight: float = 0.0
    mosaic_layout: str = "paste"
    # KL from uniform of each image's group shares (losses.group_usage_loss): no group may take the whole
    # image. Not part of OVSegmentor: 0 reproduces the paper.
    group_usage_weight: float = 0.0
    # which assignment the shares are read from: "soft" (the softmax over groups; diffuse assignments can make
    # it even) or "hard" (the one-hot the groups are pooled with, straight-through gradients). Soft learned
    # better on 2 of 3 seeds at step 400 (docs/results.md, 1 Dec 2026, evening)
    group_usage_on: str = "soft"

    def __post_init__(self):
        if self.mosaic_layout not in ("paste", "side"):
            raise ValueError(f"loss.mosaic_layout must be 'paste' or 'side', got {self.mosaic_layout!r}")
        if self.seg_assignment not in ("hard", "soft"):
            raise ValueError(f"loss.seg_assignment must be 'hard' or 'soft', got {self.seg_assignment!r}")
        if self.group_usage_on not in ("hard", "soft"):
            raise ValueError(f"loss.group_usage_on must be 'hard' or 'soft', got {self.group_usage_on!r}")

    @property
    def needs_entity_prompts(self) -> bool:
        """Whether batches must carry the prompts of their captions' entities (``class_ids``/``entity_targets``)."""
        return self.multilabel_weight > 0 or self.entity_group_weight > 0 or self.mosaic_weight > 0


@dataclass(frozen=True)
class EvalConfig:
    """Zero-shot segmentation protocol (GroupViT/OVSegmentor; reference section 7)."""

    templates: tuple[str, ...] = ("a photo of a {}.",)
    short_side: int = 448
    # ... and the long side at most this: MMSegmentation's keep-ratio Resize with img_scale=(2048, 448), as the
    # released dataset configs give it (it only matters for images wider than 2048 / 448 = 4.6 : 1); None: no cap
    long_side: int | None = 2048
    crop_size: int = 448
    stride: int = 224
    bg_thresh: float | None = None  # None: each dataset's protocol value (VOC 0.95, Context 0.35, COCO 0.9)
    top_k: int = 5
    # sliding windows sent through the model at once: bounds the memory of one image, whatever its shape (a
    # panorama has thousands of windows); the scores do not depend on it
    window_batch: int = 16
    # evaluation sets: "name=/path" (voc, context60, context59, coco_object, ade20k, synthetic); a bare
    # "synthetic" is the embedded synthetic world's val split
    datasets: tuple[str, ...] = ("synthetic",)
    # score a dataset under other class names: "name=FILE" (a YAML/JSON mapping canonical -> new name, or one
    # name per line in class order); it is logged as <name>-<file stem>, next to the canonical scores
    class_names: tuple[str, ...] = ()
    max_images: int | None = None  # evaluate on the first N images only (None: all)
    num_overlays: int = 4


@dataclass(frozen=True)
class DataConfig:
    """Caption shards (img2dataset webdataset layout); with none given, the generated synthetic world."""

    train: tuple[str, ...] = ()  # shard paths or brace patterns, e.g. /data/cc4m/{00000..01242}.tar
    synthetic_dir: str | None = None  # default: ~/.cache/ovseg/synthetic/<seed>-<sizes>
    synthetic_seed: int = 0
    synthetic_train: int = 20000
    synthetic_val: int = 500
    synthetic_seg: int = 2000
    synthetic_background: str = "cluttered"  # or "smooth" (no pixel noise, no lines): ovseg.data.synthetic.scene
    synthetic_min_scale: float = 0.3  # object diameters as a fraction of the image side
    synthetic_max_scale: float = 0.6
    synthetic_max_objects: int = 4  # objects per image: 1 to this many
    loader_workers: int = 2  # DataLoader processes per training worker
    shuffle_buffer: int = 2000
    # batches per epoch per rank; default: real shards' own counts (summary.json / *_stats.json; an error when
    # a shard has none), the synthetic world's synthetic_train / global batch
    epoch_length: int | None = None
    # "paper": stage 1 RandAugment + erasing + crop 0.08-1, stage 2 crop 0.4-1 + flip; "light": crop 0.4-1 + flip
    # in both stages; "flip": a horizontal flip only (small synthetic images: a crop can cut out a named object)
    augment: str = "paper"
    # where a frozen text tower's feature cache is kept (one file per tower fingerprint; ovseg.models.textcache).
    # Default: next to the data: <world>/text-cache for the synthetic world, else ~/.cache/ovseg/text-cache
    text_cache_dir: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and scale (reference section 6). Learning rates are for a global batch of
    ``lr_batch`` and scale linearly with the actual global batch, as in the released code."""

    batch_size: int = 256  # per training worker
    num_workers: int = 8  # Ray Train workers (DDP ranks)
    use_gpu: bool = True
    cpus_per_worker: int = 4
    stage1_steps: int = 58600  # 30 epochs of ~4M captions at a global batch of 2048
    stage2_steps: int = 39000  # 10 epochs at a global batch of 1024 (stage 2 halves the per-GPU batch)
    stage2_batch_size: int | None = 128
    lr: float = 6.4e-4
    warmup_lr: float = 1.6e-5
    min_lr: float = 1.6e-4
    warmup_steps: int = 3900
    stage2_lr: float = 1e-5
    stage2_min_lr: float = 1e-6
    lr_batch: int = 4096
    weight_decay: float = 0.05
    clip_grad: float = 5.0
    bf16: bool = True  # autocast on GPU; CPU runs stay in float32
    # torch.compile the training forward with this backend ("inductor" on a GPU; "eager" only checks the wiring);
    # None: not compiled. Checkpoints and evaluation use the uncompiled module (the same parameters).
    compile: str | None = None
    log_every: int = 20
    eval_every: int = 2000
    ckpt_every: int = 1000
    max_failures: int = 2  # Ray restarts of failed workers, from the latest checkpoint
    stop_after: int | None = None  # end this invocation at this global step (checkpointed); --resume goes on
    output_dir: str = "runs"
    run_name: str | None = None
    experiment: str = "ovseg-pretrain"


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy with Flower's clipping-and-noise wrappers (off when noise_multiplier is 0)."""

    mode: str = "server"  # "server": the server clips each update; "client": sites clip (adds a client mod)
    noise_multiplier: float = 0.0  # Gaussian noise std = noise_multiplier * clipping_norm / sampled sites
    clipping_norm: float = 1.0  # L2 bound of one site's update (the model delta)
    delta: float = 1e-5  # target delta of the (epsilon, delta) budget that is logged per round


@dataclass(frozen=True)
class FedConfig:
    """Federated hybrid training with Flower (clients/): the server's strategy and each site's local work."""

    rounds: int = 10
    local_steps: int = 20  # optimiser steps per site per round
    local_batch: int = 32
    lr: float = 1e-4  # local AdamW learning rate (constant within a round)
    strategy: str = "fedavg"  # fedavg | fedprox | fedadam | fedtrimmedavg | fedmedian
    proximal_mu: float = 0.0  # FedProx: mu / 2 * ||w - w_global||^2 added to the local loss
    server_lr: float = 1e-2  # FedAdam's eta
    trim_beta: float = 0.2  # FedTrimmedAvg: fraction cut at each end
    train_text: bool = False  # the text tower stays frozen (and home) unless true
    # BatchNorm layers that normalise with their running statistics during a site's round (and are not
    # updated): module prefixes of the model, see OVSegmentor.set_frozen_norms
    frozen_norms: tuple[str, ...] = ("text_projector",)
    transport: str = "float32"  # or "bfloat16": updates travel at half the bytes
    max_update_norm: float = 1e3  # L2 norm of (update - global) beyond which an update is refused
    min_sites: int = 2  # sites that must be connected before a round starts
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    round_timeout: float = 600.0  # seconds a round waits for replies; late or failed sites are left out
    # a pretraining checkpoint to start from. The server reads it; the trainable tensors reach sites by message,
    # the frozen towers never travel: each site loads them from its own copy (node config base-checkpoint,
    # else this path), and a fingerprint check refuses a site whose copy differs.
    init_checkpoint: str | None = None
    sites_dir: str | None = None  # simulation: virtual node i trains on <sites_dir>/site-<i> (make_sites.py)
    output_dir: str = "runs/federated"  # server checkpoints: <output_dir>/<run name>/round-XXXX.safetensors
    run_name: str = "federation"
    experiment: str = "ovseg-federated"
    dp: DPConfig = field(default_factory=DPConfig)


@dataclass(frozen=True)
class Config:
    name: str = "vit-b16-cc4m"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    seed: int = 0
