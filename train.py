"""Contrastive image-report training: the loop, readable top to bottom.

:func:`train` (run_train.py's entry point) checks every input before anything costs time, builds the
model, optimizer and schedule (or restores them on ``--resume``), then steps through the run's batches,
logging, validating and saving as it goes. Each part lives in one place: data and sample order in
:mod:`cxr_data`, the loss in :mod:`loss`, device / precision / processes / optimizer in :mod:`runtime`,
the run folder's files in :mod:`checkpoints`, a resume's flags in :mod:`resume`, validation in
:mod:`validation`. Here: the model a run starts from (:func:`load_clip`, :func:`make_model`), the loop,
and the original's :func:`make` and :func:`train_main`; the names users import from ``train`` stay.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from argparse import Namespace
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import checkpoints
import clip
import cxr_data
import resume
import run_lock
from checkpoints import STATE_KEYS, Checkpoints, Position, RunFolderTaken, rng_state, set_rng_state  # noqa: F401
from cxr_data import (
    MAX_EMPTY_CAPTION_FRACTION,  # noqa: F401 - re-exported, as the names below
    CXRDataset,  # noqa: F401
    PairBatches,  # noqa: F401
    batch_plan,
    caption_tokens,
    check_captions,
    default_device,
    device_transform,
    epoch_batches,  # noqa: F401
    epoch_order,  # noqa: F401
    h5_rows,
    load_data,
    pair_loader,
    plan_steps,
    read_captions,  # noqa: F401
)
from labels import COMPETITION_LABELS
from loss import Features, accumulate_gradients, clip_loss, encode_text_by_length, trim_padding  # noqa: F401
from model import CLIP, MODEL_CONFIGS, named_config, original_config
from resume import DATA_FLAGS, RESUME_FREE, RUN_LENGTH, file_fingerprint, plain_config, resume_differences  # noqa: F401
from runtime import Runtime, TrainInputError, TrainSetupError, lr_lambda, make_optimizer, setup_runtime
from validation import validation_auroc, validation_data, validation_labels

log = logging.getLogger(__name__)


# =========================================================================== model
def load_clip(model_path: str | None = None, pretrained: bool = False, context_length: int = 77) -> CLIP:
    """Build CheXzero's CLIP and optionally load a checkpoint into it, in **train** mode.

    A thin wrapper over :func:`clip.load_model`; its rules differ from ``zero_shot.load_clip``'s:

    - architecture (:func:`model.original_config`): ``pretrained=True`` OpenAI's ViT-B/32,
      ``False`` the 320-px / patch-16 / embed-768 random-init model with ``context_length``.
      There is no ``pretrained=None`` (read off the checkpoint) here: that is zero_shot's.
      With ``model_path`` the architecture is built locally and the checkpoint loaded strictly
      (no download; the original fetched OpenAI's weights only to overwrite them); ``pretrained=True``
      without ``model_path`` gives OpenAI's ViT-B/32 initial weights via :func:`clip.load`
      (``models/`` or ``~/.cache/clip``, else download).
    - device: :func:`cxr_data.default_device` (current CUDA device, else CPU), as ``zero_shot.load_clip``.
    - mode: train (``zero_shot.load_clip``: eval).
    """
    device = default_device()
    if pretrained and model_path is None:
        model, _ = clip.load("ViT-B/32", device=device, jit=False)
        return model.train()
    return clip.load_model(model_path, original_config(pretrained, context_length), device=device, train=True)


def preprocess_text(texts: list[str], model: CLIP) -> torch.LongTensor:
    """Tokenize captions for ``model``: too-long ones cut with EOT forced at the end (one tokenizer per process)."""
    return clip.tokenize(list(texts), context_length=model.context_length, truncate=True)


#: The text tower of a CLIP: every parameter the text encoder uses (``encode_text``). The image
#: tower is ``visual.*``; ``logit_scale`` belongs to neither and always trains.
TEXT_TOWER = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def tower_of(name: str) -> str | None:
    """``"image"``, ``"text"`` or None (``logit_scale``) for a parameter or buffer name of a CLIP."""
    if name.startswith("visual."):
        return "image"
    if name.split(".")[0] in TEXT_TOWER:
        return "text"
    return None


def _stay_eval(module: nn.Module) -> None:
    """Put ``module`` in eval mode for good: a later ``model.train()`` (the run's, validation's
    restore) leaves it in eval mode, so a frozen ResNet's BatchNorm never updates its running stats."""
    module.eval()
    module.train = lambda mode=True: nn.Module.train(module, False)  # type: ignore[method-assign]


def lock_towers(model: CLIP, lock_image: bool = False, lock_text: bool = False) -> list[str]:
    """Freeze the image and/or text tower LiT-style: ``requires_grad=False`` (so the optimizer, which
    takes only trainable parameters, never sees them: no update, no weight decay, no momentum) and
    eval mode for good (BatchNorm statistics stay as loaded). Returns the locked towers' names."""
    locked = [tower for tower, on in (("image", lock_image), ("text", lock_text)) if on]
    for name, param in model.named_parameters():
        if tower_of(name) in locked:
            param.requires_grad_(False)
    if "image" in locked:
        _stay_eval(model.visual)
    if "text" in locked:
        for name in TEXT_TOWER:
            module = getattr(model, name)
            if isinstance(module, nn.Module):
                _stay_eval(module)
    return locked


SIZE_OVERRIDES = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size",
                  "transformer_width", "transformer_layers")


def make_model(config: Namespace, source: Path | None = None) -> CLIP:
    """The model a training run starts from, on the CPU in train mode.

    With ``--init_checkpoint`` (or ``source``, the weights a resumed run was saved with) it is the
    checkpoint's model: :func:`initial_model`.

    Without ``--random_init`` (and with the default config) this is OpenAI's ViT-B/32, as
    the original (:func:`clip.load`); ``--random_init`` gives the 320-px model; ``--model_config``
    and the size flags pick any other shape (text heads: width // 64, at least 1). All but the first
    are new models from :func:`clip.load_model`.
    """
    name = config.model_config or ("random-init-320" if config.random_init else "vit-b-32")
    overrides = {k: getattr(config, k) for k in SIZE_OVERRIDES if getattr(config, k, None) is not None}
    if getattr(config, "init_checkpoint", None) or source is not None:
        return initial_model(config, overrides, source)
    if name == "vit-b-32" and not config.random_init and not overrides:
        try:
            model, _ = clip.load("ViT-B/32", device="cpu", jit=False)
        except RuntimeError as err:
            raise TrainSetupError(f"{err} To train without OpenAI's weights, pass --random_init.") from err
        return model.train()
    vit_only = sorted({"vision_layers", "vision_patch_size"} & overrides.keys())
    if isinstance(MODEL_CONFIGS[name]["vision_layers"], tuple) and vit_only:
        raise TrainInputError(f"--model_config {name} has a ResNet image tower (bottlenecks per stage "
                              f"{MODEL_CONFIGS[name]['vision_layers']}); {', '.join('--' + k for k in vit_only)} "
                              "only apply to ViT configs")
    shape = named_config(name, context_length=config.context_length, **overrides)
    shape["transformer_heads"] = max(1, shape["transformer_width"] // 64)
    return clip.load_model(config=shape, train=True)


def initial_model(config: Namespace, overrides: dict, source: Path | None = None) -> CLIP:
    """The ``--init_checkpoint`` model (or ``source``'s), on the CPU in train mode, its weights loaded exactly.

    The checkpoint is any CLIP weights file :func:`clip.load_checkpoint` reads (a released CheXzero
    ``.pt``, this project's ``checkpoint*.pt`` / ``best_*.pt``) or a training-state file
    (``checkpoint*.state``: the weights it names). Its architecture is read off the file
    (``model_config.json`` beside it, else the weights' shapes); with ``--model_config`` or a size
    flag the run's architecture is built instead and a checkpoint that does not fit it is refused,
    naming the file and the differing shapes. ``--context_length`` left out takes the checkpoint's;
    given and different, it is refused.
    """
    flag = "--init_checkpoint"
    path = Path(source if source is not None else config.init_checkpoint)
    if source is None and path.suffix == ".state":
        path = checkpoints.state_weights(path, flag)
    if source is None and (config.model_config or overrides):
        name = config.model_config or "random-init-320"
        shape = named_config(name, context_length=config.context_length, **overrides)
        shape["transformer_heads"] = max(1, shape["transformer_width"] // 64)
        try:
            return clip.load_model(path, shape, train=True)
        except clip.CheckpointMismatchError as err:
            asked = " ".join(f"--{k} {v}" for k, v in [("model_config", config.model_config), *overrides.items()]
                             if v is not None)
            shapes = err.wrong_shape[:4] + (["..."] if len(err.wrong_shape) > 4 else [])
            raise TrainInputError(
                f"{flag} {path}: another architecture than {asked} asks for ({len(err.wrong_shape)} mis-shaped, "
                f"{len(err.missing)} missing, {len(err.unexpected)} unexpected weights"
                f"{': ' + '; '.join(shapes) if shapes else ''}); leave out --model_config and the size flags to "
                "take the checkpoint's architecture") from None
    model = clip.load_model(path, train=True)
    if model.context_length != config.context_length:
        given = getattr(config, "given_flags", None)
        if given is not None and "context_length" not in given:
            log.info("%s %s: --context_length %d, the checkpoint's", flag, path, model.context_length)
            config.context_length = model.context_length
        else:
            raise TrainInputError(f"{flag} {path}: its text tower takes {model.context_length} tokens "
                                  f"(positional_embedding {tuple(model.positional_embedding.shape)}), not "
                                  f"--context_length {config.context_length}; leave --context_length out")
    return model


# =========================================================================== the loop
@dataclass
class Run:
    """What a run trains with, built once in :func:`train`; the loop's functions share it (no closures)."""

    config: Namespace
    rt: Runtime
    model: CLIP
    net: nn.Module                      # the model as :class:`loss.Features`, under DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    checkpoints: Checkpoints
    position: Position
    total_steps: int
    samples_per_epoch: int
    data: dict                          # fingerprints of the data files (resume checks them)
    val: tuple[DataLoader, np.ndarray] | None = None
    # the steps since the last log line: their losses, the image-text pairs they saw, when they began
    losses: list = field(default_factory=list)
    pairs: int = 0
    since: float = field(default_factory=time.perf_counter)

    def state(self) -> dict:
        """The training state saved beside the weights (:class:`Checkpoints` adds the rest of ``STATE_KEYS``)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), **asdict(self.position),
                "samples_per_epoch": self.samples_per_epoch, "rng": rng_state(),
                "config": plain_config(self.config), "world": self.rt.world, "data": self.data}


def train(config: Namespace) -> Path:
    """Run (or resume) contrastive training; return the final checkpoint path.

    The run folder is locked while the run lives (:func:`run_lock.hold`): a second training into
    the same folder, fresh or resumed, is refused instead of interleaving with this one.
    """
    config = Namespace(**vars(config))
    run_dir = Path(config.save_dir) / config.model_name
    run_dir.mkdir(parents=True, exist_ok=True)
    is_main = int(os.environ.get("RANK", "0")) == 0
    with run_lock.hold(run_dir, "training") if is_main else nullcontext():
        return _train(config, run_dir)


def _train(config: Namespace, run_dir: Path) -> Path:
    if not config.resume:
        Checkpoints(run_dir).refuse_fresh_run()
    # The saved state and every input are checked before anything costs time.
    state, state_path = None, None
    if config.resume:
        state_path = checkpoints.resolve_resume(config.resume, run_dir)
        state = checkpoints.load_training_state(state_path, run_dir, config.resume)
        resume.adopt_saved_flags(config, state["config"])
    n_images = check_inputs(config)
    data = {key: file_fingerprint(getattr(config, key)) for key in DATA_FLAGS}
    rt = setup_runtime(config)
    overridden = resume.check_resume(config, state, data, rt.world, run_dir) if state is not None else set()
    position = Position.resumed(state, n_images, config.seed, config.cxr_filepath)
    plan, total_steps = plan_run(config, position, n_images, rt, run_dir)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    # Built before the captions are tokenized: --init_checkpoint may set the context length.
    # A resumed run reads its architecture off the weights it saved, not --init_checkpoint.
    saved_weights = state_path.parent / str(state["weights"]) if state is not None else None
    model, optimizer, scheduler, scaler = build_model(
        config, rt, total_steps, saved_weights if getattr(config, "init_checkpoint", None) else None)
    tokens = caption_tokens(config.txt_filepath, config.context_length)
    if len(tokens) != n_images:
        raise TrainInputError(f"{config.cxr_filepath} holds {n_images} images but {config.txt_filepath} has "
                              f"{len(tokens)} caption rows; they must be row-aligned (re-run preprocessing)")
    images = cxr_data.read_images(config.cxr_filepath) if config.data_in_memory else config.cxr_filepath
    if state is not None:
        checkpoints.restore_state(state, state_path, run_dir, config, overridden, model, optimizer, scheduler, scaler)
        if rt.is_main:
            log.info("Resumed from %s at step %d (epoch %d, sample %d of %d)", state_path, position.step,
                     position.epoch, position.sample_in_epoch, n_images)
    saver = Checkpoints(run_dir, config.keep_last, config.keep_best,
                        f"best_{config.batch_size * rt.world}_{config.lr}_{config.model_name}",
                        state["best"] if state is not None else ())
    run = Run(config, rt, model, wrap(model, config, rt), optimizer, scheduler, scaler, saver, position,
              total_steps, n_images, data)
    if rt.is_main:
        run.val = validation_data(config, model.visual.input_resolution) if config.val_cxr_filepath else None
        saver.write_model_config(model)
        saver.start_metrics(position.step if state is not None else None)
    fit(run, plan, tokens, images)
    return finish(run)


def check_inputs(config: Namespace) -> int:
    """The training h5's number of images, after checking it, the captions and the validation files."""
    n_images = h5_rows(config.cxr_filepath)
    if n_images == 0:
        raise TrainInputError(f"{config.cxr_filepath} holds no images; re-run preprocessing")
    n_captions = check_captions(config.txt_filepath)
    if n_images != n_captions:
        raise TrainInputError(f"{config.cxr_filepath} holds {n_images} images but {config.txt_filepath} has "
                              f"{n_captions} caption rows; they must be row-aligned (re-run preprocessing)")
    if config.val_cxr_filepath:
        validation_labels(config)
    return n_images


def plan_run(config: Namespace, position: Position, n_images: int, rt: Runtime,
             run_dir: Path) -> tuple[list[tuple[int, int, np.ndarray]], int]:
    """This process's batches from ``position`` to the end of ``--epochs``, and the step the run ends at
    (``--max_steps`` at most); refused when there is no step left to take."""
    plan = batch_plan(n_images, config.batch_size, config.seed, config.epochs, position.epoch,
                      position.sample_in_epoch, position.order_seed, rt.rank, rt.world)
    total_steps = min(config.max_steps or 10 ** 12, position.step + plan_steps(plan, config.accum_freq))
    if total_steps <= position.step:
        limit = f"--epochs {config.epochs}" + (f" / --max_steps {config.max_steps}" if config.max_steps else "")
        raise TrainInputError(f"--resume {config.resume}: the run in {run_dir} is at step {position.step}, already "
                              f"the end of its {limit}; nothing to train. Pass a larger --epochs or --max_steps to "
                              "continue it" + (" (with --resume_override, as the cosine schedule depends on them)"
                                               if config.lr_schedule == "cosine" else ""))
    return plan, total_steps


def build_model(config: Namespace, rt: Runtime, total_steps: int, source: Path | None = None) -> tuple:
    """The model on the run's device (:func:`make_model`; ``source``: see there), its towers locked as
    ``--lock_image`` / ``--lock_text`` ask, its optimizer (trainable parameters only), LR schedule and
    gradient scaler."""
    model = make_model(config, source).to(rt.device)
    locked = lock_towers(model, getattr(config, "lock_image", False), getattr(config, "lock_text", False))
    if locked and rt.is_main:
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        log.info("locked the %s tower%s: %d parameters frozen (eval mode), %d trained", " and ".join(locked),
                 "s" if len(locked) > 1 else "", frozen, sum(p.numel() for p in model.parameters()) - frozen)
    if config.grad_checkpointing:
        model.visual.transformer.grad_checkpointing = True
        model.transformer.grad_checkpointing = True
    optimizer = make_optimizer(config, model, rt.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total_steps))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    return model, optimizer, scheduler, scaler


def wrap(model: CLIP, config: Namespace, rt: Runtime) -> nn.Module:
    """The training forward (:class:`loss.Features`), under DDP across processes and torch.compile."""
    net: nn.Module = Features(model, trim_text=not config.compile)
    if rt.world > 1:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    if config.compile:
        net = torch.compile(net)
    return net


def fit(run: Run, plan: list[tuple[int, int, np.ndarray]], tokens: np.ndarray, images: str | np.ndarray) -> None:
    """Train over ``plan`` until its end or the run's last step: ``--accum_freq`` batches per step
    (fewer at the end of an epoch), then logging, validation and periodic checkpoints."""
    config, rt, position = run.config, run.rt, run.position
    first_step, resolution = position.step, run.model.visual.input_resolution
    progress = tqdm(total=run.total_steps, initial=position.step, desc="training", disable=not rt.is_main)
    # One loader for the whole run (workers live as long as the run), over the batches that
    # remain: epoch by epoch, each from the sampler's seeded order, from the sample a resume left at.
    loader = pair_loader(images, tokens, [idx for _, _, idx in plan], config.num_workers, rt.device)
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    for (epoch, consumed, _), (imgs, txt) in zip(plan, loader):
        pending.append((device_transform(imgs.to(rt.device, non_blocking=True), resolution),
                        txt.to(rt.device, non_blocking=True)))
        if len(pending) < config.accum_freq and consumed < run.samples_per_epoch:
            continue
        loss = train_step(run.net, run.model, pending, run.optimizer, run.scaler, config, rt)
        run.scheduler.step()
        position.advance(epoch, consumed, run.samples_per_epoch, config.seed)
        run.losses.append(loss)
        run.pairs += sum(img.shape[0] for img, _ in pending) * rt.world
        pending = []
        progress.update(1)
        after_step(run, epoch, progress)
        if position.step >= run.total_steps:
            break
    progress.close()
    if position.step == first_step:
        # Never an untrained model saved as the final one.
        raise TrainInputError(f"the run in {run.checkpoints.run_dir} took no optimizer step (no batches left in "
                              f"--epochs {config.epochs}); no checkpoint was written")


def after_step(run: Run, epoch: int, progress: tqdm) -> None:
    """Validate, log and save as the step's number asks."""
    config, step = run.config, run.position.step
    val_auc = ""
    is_val_step = bool(config.val_cxr_filepath and config.val_interval and step % config.val_interval == 0)
    if is_val_step and run.val is not None:
        auc = validation_auroc(run.model, *run.val, COMPETITION_LABELS, tuple(config.val_pair_template))
        run.checkpoints.offer_best(auc, step, run.model)
        log.info("step %d: validation mean AUROC %.4f (best %.4f)", step, auc, run.checkpoints.best[0][0])
        val_auc = f"{auc:.4f}"
    if step % config.log_interval == 0 or is_val_step or step == run.total_steps:
        mean_loss = torch.stack(run.losses).mean()
        if run.rt.world > 1:
            dist.all_reduce(mean_loss)
            mean_loss /= run.rt.world
        rate = run.pairs / (time.perf_counter() - run.since)
        if run.rt.is_main:
            progress.set_postfix(loss=f"{mean_loss.item():.3f}", pairs_s=f"{rate:.1f}")
            run.checkpoints.log_metrics([step, epoch, f"{mean_loss.item():.6f}",
                                         f"{run.scheduler.get_last_lr()[0]:.3g}",
                                         f"{run.model.logit_scale.item():.6f}", f"{rate:.2f}", val_auc])
        run.losses, run.pairs, run.since = [], 0, time.perf_counter()
    if run.rt.is_main and step % config.save_interval == 0:
        run.checkpoints.save_periodic(step, run.model, run.state())


def finish(run: Run) -> Path:
    """The final checkpoint (and its training state, and the loss plot); all processes wait for it."""
    final = run.checkpoints.run_dir / "checkpoint.pt"
    if run.rt.is_main:
        run.checkpoints.save("checkpoint", run.model, run.state())
        checkpoints.plot_loss(run.checkpoints.metrics, run.checkpoints.run_dir / "loss.png")
        log.info("Saved %s", final)
    if run.rt.world > 1:
        dist.barrier()
    return final


def train_step(net: nn.Module, model: CLIP, micro: list[tuple[torch.Tensor, torch.Tensor]],
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, config: Namespace,
               rt: Runtime) -> torch.Tensor:
    """One optimizer step over one or more micro-batches (the gradient of their contrastive loss:
    :func:`loss.accumulate_gradients`), with the optional gradient clipping and logit-scale clamp;
    returns the loss (detached)."""
    optimizer.zero_grad(set_to_none=True)
    batch_loss = accumulate_gradients(net, micro, scaler, rt, config.gather_with_grad, config.local_loss)
    if config.grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if config.clamp_logit_scale:
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return batch_loss


# =========================================================================== the original's API
def make(config, cxr_filepath: str, txt_filepath: str, model_path: str | None = None
         ) -> tuple[CLIP, DataLoader, torch.device, nn.Module, torch.optim.Optimizer]:
    """The original's ``make``: ``(model, data_loader, device, criterion, optimizer)``, as the original:
    :func:`load_data` (``config.batch_size``), :func:`load_clip` (``model_path``, ``pretrained``,
    ``config.context_length``) on ``device``, ``nn.CrossEntropyLoss()`` and AdamW with ``config.lr``.

    ``config``: a Namespace or a dict. The original read ``config.pretrained`` and ``config.column``,
    which run_train.py's flags lack; they default here to ``not config.random_init`` and
    ``"impression"`` (the column preprocessing writes), ``context_length`` to 77.
    """
    config = Namespace(**config) if isinstance(config, dict) else config
    pretrained = getattr(config, "pretrained", not getattr(config, "random_init", False))
    loader, device = load_data(cxr_filepath, txt_filepath, batch_size=config.batch_size, pretrained=pretrained,
                               column=getattr(config, "column", "impression"))
    model = load_clip(model_path=model_path, pretrained=pretrained,
                      context_length=getattr(config, "context_length", 77)).to(device)
    return model, loader, device, nn.CrossEntropyLoss(), torch.optim.AdamW(model.parameters(), lr=config.lr)


def train_main(cxr_filepath: str, txt_filepath: str, hyperparams: dict, output_path: str,
               model_path: str | None = None, pretrained: bool = False) -> CLIP:
    """The original's ``train_main``: train :func:`load_clip`'s model (``model_path``, ``pretrained``) with
    SGD on :func:`load_data`'s batches and the original's loss, ``(criterion(logits_per_image, arange) +
    criterion(logits_per_text, arange)) / 2``; save its weights to ``output_path`` (a folder:
    ``checkpoint.pt`` in it) and return it. ``hyperparams``: ``batch_size``, ``learning_rate``,
    ``momentum``, ``epochs``, ``criterion`` (default ``nn.CrossEntropyLoss()``).

    The original could not run: it called an undefined ``train_clip``, and its loader read a
    ``report`` column that preprocessing does not write (here: ``impression``). For seeded,
    resumable, validated runs use :func:`train` (run_train.py).
    """
    config = Namespace(batch_size=hyperparams["batch_size"], lr=hyperparams["learning_rate"], pretrained=pretrained)
    model, loader, device, criterion, _ = make(config, cxr_filepath, txt_filepath, model_path)
    criterion = hyperparams.get("criterion") or criterion
    optimizer = torch.optim.SGD(model.parameters(), lr=hyperparams["learning_rate"], momentum=hyperparams["momentum"])
    for epoch in range(hyperparams["epochs"]):
        for batch in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None):
            images, texts = batch["img"].to(device), preprocess_text(batch["txt"], model).to(device)
            logits_per_image, logits_per_text = model(images, texts)
            labels = torch.arange(len(images), device=device)
            loss = (criterion(logits_per_image, labels) + criterion(logits_per_text, labels)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    out = Path(output_path)
    out = out / "checkpoint.pt" if out.is_dir() or str(output_path).endswith(os.sep) else out
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.atomic_save(model.state_dict(), out)
    return model
