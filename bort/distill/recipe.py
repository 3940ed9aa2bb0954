"""The distillation recipe: a teacher, a student, pretraining shards → a trained student, resumable.

    python run_pretraining_distillation.py --train 'data/train/part-*.rec' --test 'data/test/part-*.rec' \
        --teacher path/to/teacher --student bort_4_8_768_1024 --output-dir out
    torchrun --nproc-per-node 2 run_pretraining_distillation.py …        # DDP (gloo on CPU, NCCL on GPU)
    mpirun -np 2 python run_pretraining_distillation_hvd.py …            # MPI launchers, no Horovod needed

Exactness by construction: the records of a step are a pure function of (seed, step) (`BatchPlan`), dropout
is reseeded from (seed, step, rank, micro-step), and the loss of every micro-batch is weighted by its share of
the global batch's masked tokens, so N ranks with batch B/N follow the same curve as one rank with batch B,
and a resumed run continues bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn
from tqdm import tqdm

from ..atomic import atomic_write_text
from ..checkpoint import checkpoint_task, load_pretrained, model_for_task, read_checkpoint
from ..checkpoint.errors import CheckpointError
from ..config import BortConfig
from ..data.pretraining_dataset import PretrainingDataset, collate
from ..model import BortForMaskedLM
from ..train import checkpointing
from ..train.distributed import DistEnv, all_reduce_sum, barrier, cleanup, init_distributed
from ..train.metrics import TENSORBOARD_DIR, JsonlLogger, check_report_to, plot_curves, read_jsonl
from ..train.optim import OPTIMIZERS, build_optimizer
from ..train.resume import check_resume_settings, restore_optimizer_and_schedule
from ..train.recipe import Recipe
from ..train.sampler import BatchPlan
from ..train.schedule import SCHEDULES, build_schedule
from ..train.settings import Settings, as_list, boolean, number, one_of, optional, positive_int, setting
from .extract import extract_student
from .losses import DistillationLoss, uniform_layer_map

logger = logging.getLogger(__name__)

COMPONENTS = ("mlm", "kd", "hidden", "attention", "teacher_mse", "mask_penalty")
# What a distillation writes into its output directory: a fresh run refuses a directory holding any of them
# (unless --resume or --overwrite), and --overwrite removes exactly these.
ARTEFACTS = ("checkpoints", "final", "metrics.jsonl", "settings.json", "extracted.json", "summary.json", "loss.png",
             ".push-staging", TENSORBOARD_DIR)
# Settings that do not change the numbers of the run (logging, evaluation, checkpoint cadence, launch): they may
# differ on --resume. Every other setting must match the checkpoint's unless --allow-setting-change names it.
RESUME_FREE = frozenset({"test", "output_dir", "resume", "overwrite", "allow_setting_change", "progress", "plot",
                         "log_interval", "eval_interval", "eval_batches", "checkpoint_interval", "keep_checkpoints",
                         "push_to", "launcher", "max_bad_steps", "allow_truncated_data", "report_to"})
_STATE_TYPES = {"step": int, "optimizer": dict, "scheduler": dict, "scaler": dict, "loss": dict, "bad_steps": int,
                "skipped_steps": int, "vocab_hash": str, "global_batch_size": int}
PUSH_DRAIN_SECONDS = 600.0  # how long the end of a run waits for queued checkpoint uploads


@dataclass
class DistillSettings(Settings):
    """Every knob of a distillation run (the command-line flags map one to one); checked when built, each
    constraint declared beside its field (`bort.train.settings`)."""

    train: list[str] = setting(coerce=as_list)
    test: list[str] = setting(default_factory=list, coerce=as_list)
    teacher: str | None = None
    teacher_config: str | None = None
    student: str = "bort_4_8_768_1024"
    student_init: str = setting("random", check=one_of("random", "teacher", "extract"))
    output_dir: str = "distill_output"
    batch_size: int = setting(8, check=positive_int())
    accumulate: int = setting(1, check=positive_int())
    max_steps: int | None = setting(None, check=optional(positive_int()))  # None: num_epochs over the data
    num_epochs: float = setting(1.0, check=number(0, low_open=True))
    lr: float = setting(1e-4, check=number(0))  # 0 allowed: a frozen run (checking an initialisation)
    optimizer: str = setting("bertadam", check=one_of(*OPTIMIZERS))
    weight_decay: float = setting(0.01, check=number(0))
    eps: float = setting(1e-6, check=number(0, low_open=True))
    warmup_ratio: float = setting(0.01, check=number(0, 1, high_open=True))
    schedule: str = setting("linear", check=one_of(*SCHEDULES))
    clip_norm: float = setting(1.0, check=number(0))  # 0: no clipping
    mlm_weight: float = setting(0.1, check=number(0))
    kd_weight: float | None = setting(None, check=optional(number(0)))  # None: chosen by the teacher's heads
    hidden_weight: float | None = setting(None, check=optional(number(0)))
    attention_weight: float | None = setting(None, check=optional(number(0)))
    temperature: float = setting(2.0, check=number(0, low_open=True))
    bort_compat_kd: bool = setting(False, check=boolean())
    precision: str = setting("fp32", check=one_of("fp32", "bf16", "fp16"))
    log_interval: int = setting(10, check=positive_int())
    eval_interval: int = setting(100, check=positive_int(0))  # 0: no evaluation
    eval_batches: int = setting(20, check=positive_int())
    checkpoint_interval: int = setting(100, check=positive_int(0))  # 0: no checkpoints
    keep_checkpoints: int = setting(3, check=positive_int(0))  # 0: keep them all
    resume: bool = setting(False, check=boolean())
    # A fresh run replacing an earlier run's outputs (ARTEFACTS) in output_dir.
    overwrite: bool = setting(False, check=boolean())
    # Settings --resume may change (e.g. max_steps); the names are checked against the checkpoint's.
    allow_setting_change: list[str] = setting(default_factory=list, coerce=as_list)
    seed: int = setting(0, check=positive_int(0))
    max_bad_steps: int = setting(10, check=positive_int(0))
    launcher: str = setting("auto", check=one_of("auto", "torchrun", "mpi", "none"))
    allow_truncated_data: bool = setting(False, check=boolean())
    progress: bool = setting(True, check=boolean())
    # loss.png at the end (a short run, e.g. one candidate of `bort search`, may skip it)
    plot: bool = setting(True, check=boolean())
    push_to: str | None = None  # s3://BUCKET/PREFIX: each checkpoint is uploaded in the background
    # λ of the DAM mask penalty λ·Σ|M| (student attention dam_s/dam_u); 0: none
    dam_lambda: float = setting(0.0, check=number(0))
    # "tensorboard": metrics.jsonl's records also as TensorBoard events; its package is checked here, so a run
    # without it fails before any work
    report_to: str | None = setting(None, check=check_report_to)

    def check_settings(self) -> Iterable[str]:
        if self.student_init in ("teacher", "extract") and self.teacher is None:
            yield (f"student_init {self.student_init!r} needs a teacher (--student-init {self.student_init} needs "
                   "--teacher)")


class _StudentWithLoss(nn.Module):
    """Student + loss in one module, so DDP synchronises the loss's projections with the student."""

    def __init__(self, student: BortForMaskedLM, loss: DistillationLoss, dam_lambda: float = 0.0) -> None:
        super().__init__()
        self.student, self.loss, self.dam_lambda = student, loss, dam_lambda

    def forward(self, batch: dict[str, torch.Tensor], teacher_out: Any) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.student(batch["input_ids"], batch["attention_mask"], masked_positions=batch["masked_positions"],
                           output_hidden_states=self.loss.needs_hidden_states,
                           output_attentions=self.loss.needs_attentions)
        total, parts = self.loss(out, teacher_out, batch["masked_ids"], batch["masked_weights"],
                                 batch["attention_mask"])
        if self.dam_lambda:
            # SparseBERT's search: + λ·Σ|M| over the masks this forward sampled (the DAM mechanism's
            # regularisation term, as the model reports it).
            penalty = self.student.attention_regularization()
            total = total + self.dam_lambda * penalty
            parts = {**parts, "mask_penalty": float(penalty.detach()), "total": float(total.detach())}
        return total, parts


class NonFiniteLossError(RuntimeError):
    """Too many steps had NaN/inf losses or gradients."""


def init_student_from_teacher(student: BortForMaskedLM, teacher: nn.Module, layer_map: list[tuple[int, int]]) -> None:
    """Copy the teacher's embeddings and its mapped layers into the student; shapes must agree."""
    t_state = (teacher.bort if hasattr(teacher, "bort") else teacher).state_dict()
    s_encoder = student.bort
    wanted: dict[str, torch.Tensor] = {}
    for key, value in t_state.items():
        if key.startswith("embeddings."):
            wanted[key] = value
    for s_idx, t_idx in layer_map:
        if s_idx == 0:
            continue
        prefix = f"encoder.layer.{t_idx - 1}."
        for key, value in t_state.items():
            if key.startswith(prefix):
                wanted[f"encoder.layer.{s_idx - 1}." + key[len(prefix):]] = value
    own = s_encoder.state_dict()
    bad = [f"{k}: teacher {tuple(v.shape)} vs student {tuple(own[k].shape)}"
           for k, v in wanted.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError("cannot initialise the student from the teacher, shapes differ (--student-init extract "
                              "takes a sub-network of a wider teacher):\n  " + "\n  ".join(bad))
    with torch.no_grad():
        for key, value in wanted.items():
            if key in own:
                own[key].copy_(value)


class DistillationRecipe(Recipe):
    """setup → train → cleanup (`bort.train.recipe.Recipe`), with evaluation, checkpoints and resume."""

    artefacts = ARTEFACTS

    def __init__(self, settings: DistillSettings) -> None:
        super().__init__(settings)
        self.s = settings  # short name: the loop reads a setting on most lines
        self.out = Path(settings.output_dir)

    # --- setup ---------------------------------------------------------------------------------------
    def setup(self) -> None:
        s = self.s
        self.env: DistEnv = init_distributed(s.launcher)
        self.device = self.env.device
        if self.env.is_main:  # rank 0 writes the directory, so it owns it (before anything slow is loaded)
            self.claim(self.out, resume=s.resume, overwrite=s.overwrite)
        self.train_data = PretrainingDataset(s.train, allow_truncated=s.allow_truncated_data)
        header = self.train_data.header
        self.vocab_hash = header["vocab_hash"]
        self.pad_id = int(header["special_ids"]["pad"])
        self.data_vocab_size = int(header["vocab_size"])
        self.test_data = (PretrainingDataset(s.test, expected_vocab_hash=self.vocab_hash,
                                             allow_truncated=s.allow_truncated_data) if s.test else None)

        self.teacher, teacher_cfg, has_mlm = self._load_teacher()
        student_cfg = BortConfig.resolve(s.student)
        if student_cfg.vocab_size != self.data_vocab_size or student_cfg.pad_token_id != self.pad_id:
            logger.info("student vocabulary set to the data's: %d ids, pad %d", self.data_vocab_size, self.pad_id)
            student_cfg = dataclasses.replace(student_cfg, vocab_size=self.data_vocab_size, pad_token_id=self.pad_id)
        self.student_config = student_cfg
        longest = max(self.train_data.shards, key=lambda shard: shard.max_seq_length)
        data_length = longest.max_seq_length
        models = [("student", student_cfg)] + ([("teacher", teacher_cfg)] if teacher_cfg is not None else [])
        for role, cfg in models:  # before training, not as an index error at the first long record
            if data_length > cfg.max_sequence_length:
                raise ValueError(f"{longest.path}: the data holds sequences of up to {data_length} tokens but the "
                                 f"{role} has {cfg.max_sequence_length} positions; create the data with "
                                 f"--max_seq_length {cfg.max_sequence_length} or give the {role} more positions")

        kd = s.kd_weight if s.kd_weight is not None else (0.5 if has_mlm else 0.0)
        # Without teacher logits, hidden states and attentions carry the teacher's knowledge.
        hidden = s.hidden_weight if s.hidden_weight is not None else (0.0 if has_mlm or self.teacher is None else 1.0)
        attention = s.attention_weight if s.attention_weight is not None else (
            0.0 if has_mlm or self.teacher is None else 1.0)
        layer_map = (uniform_layer_map(student_cfg.num_hidden_layers, teacher_cfg.num_hidden_layers)
                     if teacher_cfg is not None else None)
        self.loss_fn = DistillationLoss.from_configs(
            student_cfg, teacher_cfg or student_cfg, teacher_has_mlm_head=has_mlm, mlm_weight=s.mlm_weight,
            kd_weight=kd if self.teacher is not None else 0.0, hidden_weight=hidden, attention_weight=attention,
            temperature=s.temperature, bort_compat_kd=s.bort_compat_kd, layer_map=layer_map)

        torch.manual_seed(s.seed)  # the same initial student on every rank
        self.student = BortForMaskedLM(student_cfg)
        self.extracted: dict | None = None
        if s.student_init == "teacher":  # with a teacher: DistillSettings.check_settings
            init_student_from_teacher(self.student, self.teacher, layer_map)
        elif s.student_init == "extract":
            self.extracted = extract_student(self.student, self.teacher, layer_map)
        if s.dam_lambda and self.student.attention_regularization() is None:
            raise ValueError(f"--dam-lambda {s.dam_lambda} needs a student with attention dam_s or dam_u, "
                             f"not {student_cfg.attention!r}")
        self.joint = _StudentWithLoss(self.student, self.loss_fn, s.dam_lambda).to(self.device)
        self.model: nn.Module = self.joint
        if self.env.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.joint, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=student_cfg.add_pooler)

        self.plan = BatchPlan(len(self.train_data), s.batch_size, self.env.world_size, s.accumulate, s.seed)
        self.total_steps = s.max_steps or max(1, int(s.num_epochs * self.plan.steps_per_epoch))
        self.optimizer = build_optimizer(self.joint, name=s.optimizer, lr=s.lr, weight_decay=s.weight_decay, eps=s.eps)
        self.scheduler = build_schedule(self.optimizer, self.total_steps, warmup_ratio=s.warmup_ratio, kind=s.schedule)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=s.precision == "fp16")
        self.step, self.bad_steps, self.skipped_steps = 0, 0, 0
        self.uploader = None
        if s.push_to and self.env.is_main:
            from ..storage import CheckpointUploader

            self.uploader = CheckpointUploader(s.push_to, self.out / ".push-staging", keep=s.keep_checkpoints)
        if s.resume:
            self._resume()
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.metrics = JsonlLogger(self.out / "metrics.jsonl", resume_step=self.step if s.resume else None,
                                       report_to=s.report_to)
            atomic_write_text(self.out / "settings.json", json.dumps(s.to_dict(), indent=2) + "\n")
            if self.extracted is not None:  # which of the teacher's units the student started from
                atomic_write_text(self.out / "extracted.json", json.dumps(self.extracted) + "\n")

    def _load_teacher(self) -> tuple[nn.Module | None, BortConfig | None, bool]:
        s = self.s
        if s.teacher is None:
            return None, None, False
        cfg, state, saved_task = read_checkpoint(s.teacher, s.teacher_config)
        has_mlm = (saved_task or checkpoint_task(state)) == "mlm"
        teacher = model_for_task(cfg, state, "mlm" if has_mlm else None, s.teacher)
        teacher.requires_grad_(False).eval().to(self.env.device)
        if teacher.config.vocab_size < self.data_vocab_size or (has_mlm and teacher.config.vocab_size != self.data_vocab_size):
            raise ValueError(f"teacher {s.teacher} has {teacher.config.vocab_size} ids but the data "
                             f"{s.train[0]} was made with a {self.data_vocab_size}-id vocabulary: use the teacher's "
                             "vocabulary when creating the data")
        return teacher, teacher.config, has_mlm

    def _resume(self) -> None:
        latest = checkpointing.latest_checkpoint(self.out / "checkpoints")
        if latest is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", self.out / "checkpoints")
            return
        state = checkpointing.load_trainer_state(latest, _STATE_TYPES)
        if state["vocab_hash"] != self.vocab_hash:
            raise CheckpointError(f"{latest}: made from data with vocabulary {state['vocab_hash'][:12]}…, "
                                  f"the data given has {self.vocab_hash[:12]}…")
        if state["global_batch_size"] != self.plan.global_batch_size:
            raise CheckpointError(f"{latest}: global batch was {state['global_batch_size']}, now "
                                  f"{self.plan.global_batch_size}; resume with the same batch × ranks × accumulation")
        if "train_records" in state and state["train_records"] != len(self.train_data):
            raise CheckpointError(f"{latest}: the run was trained on {state['train_records']} records, the data "
                                  f"given ({', '.join(self.s.train)}) holds {len(self.train_data)}; resume on the "
                                  "original data")
        changed: list[str] = []
        if isinstance(state.get("settings"), dict):
            # Only settings both sides know are compared: a field added to (or dropped from) the settings since
            # the checkpoint was written has no recorded value to compare with.
            now = {k: v for k, v in self.s.to_dict().items() if k in state["settings"]}
            before = {k: state["settings"][k] for k in now}
            changed = check_resume_settings(latest, before, now, self.s.allow_setting_change, RESUME_FREE)
        else:
            logger.warning("%s: no settings recorded (an older checkpoint); they cannot be checked", latest)
        student = load_pretrained(latest, task="mlm", strict_heads=True)
        try:
            self.student.load_state_dict(student.state_dict())
            self.loss_fn.load_state_dict(state["loss"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as err:
            raise CheckpointError(f"{latest}: its student, loss or scaler state does not fit this run's "
                                  f"({type(err).__name__}: {err})") from None
        restore_optimizer_and_schedule(latest / checkpointing.TRAINER_STATE, self.optimizer, self.scheduler,
                                       state["optimizer"], state["scheduler"], state["step"], changed)
        if changed:
            logger.warning("resuming %s with changed settings (allowed): %s", latest, ", ".join(
                f"{k} {state['settings'].get(k)!r} → {getattr(self.s, k)!r}" for k in changed))
        self.step, self.bad_steps, self.skipped_steps = state["step"], state["bad_steps"], state["skipped_steps"]
        if self.env.is_main:
            logger.info("resumed from %s at step %d", latest, self.step)

    # --- one step --------------------------------------------------------------------------------------
    def _batch(self, dataset: PretrainingDataset, indices) -> dict[str, torch.Tensor]:
        batch = collate([dataset[int(i)] for i in indices], pad_id=self.pad_id)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _autocast(self):
        if self.s.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.s.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _teacher_forward(self, batch: dict[str, torch.Tensor]) -> Any:
        if self.teacher is None or not self.loss_fn.needs_teacher:
            return None
        with torch.no_grad(), self._autocast():
            return self.teacher(batch["input_ids"], batch["attention_mask"], masked_positions=batch["masked_positions"],
                                output_hidden_states=self.loss_fn.needs_hidden_states,
                                output_attentions=self.loss_fn.needs_attentions)

    def train_step(self) -> dict[str, float]:
        """One optimiser step over the global batch; returns globally averaged loss components."""
        s, env = self.s, self.env
        self.model.train()
        micro = [self._batch(self.train_data, self.plan.indices(self.step, env.rank, m)) for m in range(s.accumulate)]
        counts = torch.tensor([float(b["masked_weights"].sum()) for b in micro], dtype=torch.float64)
        global_count = float(all_reduce_sum(counts.sum().clone(), env))
        sums = torch.zeros(len(COMPONENTS) + 2, dtype=torch.float64)  # components…, total, non-finite flag
        for m, batch in enumerate(micro):
            # Dropout noise from (seed, step, rank, micro-step): resuming needs no RNG state at all.
            torch.manual_seed(hash((s.seed, self.step, env.rank, m)) & 0x7FFF_FFFF_FFFF)
            share = float(counts[m]) / max(global_count, 1e-8)
            sync = nullcontext() if (m == len(micro) - 1 or not env.distributed) else self.model.no_sync()
            with sync:
                with self._autocast():
                    total, parts = self.model(batch, self._teacher_forward(batch))
                if not torch.isfinite(total):
                    sums[-1] += 1
                # DDP averages gradients over ranks; × world_size makes it the global masked-token mean.
                self.scaler.scale(total * share * env.world_size).backward()
            for i, name in enumerate(COMPONENTS):
                sums[i] += parts.get(name, float("nan")) * share
            sums[-2] += parts["total"] * share
        all_reduce_sum(sums, env)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.joint.parameters(), s.clip_norm if s.clip_norm > 0 else math.inf)
        finite = sums[-1].item() == 0 and bool(torch.isfinite(grad_norm))
        if finite or self.scaler.is_enabled():
            # With fp16 the scaler itself skips non-finite steps and lowers its scale.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if not finite:
            self.bad_steps += 1
            self.skipped_steps += 1
            if self.bad_steps > s.max_bad_steps:
                raise NonFiniteLossError(f"{self.bad_steps} steps had non-finite losses or gradients (limit "
                                         f"{s.max_bad_steps}, last at step {self.step}): lower the learning rate, "
                                         "use fp32/bf16, or check the data")
        # Zero in place rather than freeing: re-allocating ~300 MB of gradients (a 50k-vocabulary embedding)
        # every step costs page faults, as glibc hands blocks above 32 MB back to the OS (about 15% a step).
        self.optimizer.zero_grad(set_to_none=False)
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used (step() below sets the next one's)
        self.scheduler.step()
        self.step += 1
        record = {name: float(sums[i]) for i, name in enumerate(COMPONENTS) if not math.isnan(sums[i])}
        record.update(loss=float(sums[-2]), grad_norm=float(grad_norm), lr=lr,
                      masked_tokens=global_count, skipped=not finite)
        record.update(self.student.attention_statistics())  # e.g. the last micro-batch's DAM mask_density
        return record

    # --- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """MLM loss/accuracy and KD/hidden terms on the test shards (the first eval_batches global batches)."""
        if self.test_data is None:
            return {}
        self.joint.eval()
        env, bs = self.env, self.s.batch_size
        n = min(len(self.test_data), self.s.eval_batches * bs * env.world_size)
        sums = torch.zeros(5, dtype=torch.float64)  # mlm·count, correct, count, kd·count, hidden·count
        for start in range(env.rank * bs, n, bs * env.world_size):
            batch = self._batch(self.test_data, range(start, min(start + bs, n)))
            with self._autocast():
                out = self.student(batch["input_ids"], batch["attention_mask"],
                                   masked_positions=batch["masked_positions"],
                                   output_hidden_states=self.loss_fn.needs_hidden_states,
                                   output_attentions=self.loss_fn.needs_attentions)
                _, parts = self.loss_fn(out, self._teacher_forward(batch), batch["masked_ids"],
                                        batch["masked_weights"], batch["attention_mask"])
            count = float(batch["masked_weights"].sum())
            correct = ((out.logits.argmax(-1) == batch["masked_ids"]).float() * batch["masked_weights"]).sum()
            sums += torch.tensor([parts["mlm"] * count, float(correct), count, parts.get("kd", 0.0) * count,
                                  parts.get("hidden", 0.0) * count], dtype=torch.float64)
        all_reduce_sum(sums, env)
        count = max(float(sums[2]), 1e-8)
        result = {"eval_mlm_loss": float(sums[0]) / count, "eval_mlm_accuracy": float(sums[1]) / count}
        if self.teacher is not None and "kd" in parts:
            result["eval_kd"] = float(sums[3]) / count
        if self.loss_fn.needs_hidden_states:
            result["eval_hidden"] = float(sums[4]) / count
        return result

    # --- checkpoints ------------------------------------------------------------------------------------
    def save(self) -> Path | None:
        path = None
        if self.env.is_main:
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                     "loss": self.loss_fn.state_dict(), "bad_steps": self.bad_steps,
                     "skipped_steps": self.skipped_steps, "vocab_hash": self.vocab_hash,
                     "global_batch_size": self.plan.global_batch_size, "train_records": len(self.train_data),
                     "settings": self.s.to_dict()}
            path = checkpointing.save_checkpoint(self.out / "checkpoints", self.step, self.student, state,
                                                 keep=self.s.keep_checkpoints)
            if self.uploader is not None:
                self.uploader.enqueue(path)  # snapshots and returns at once; uploads never block training
        barrier(self.env)
        return path

    # --- the loop ---------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        s, env = self.s, self.env
        bar = tqdm(total=self.total_steps, initial=self.step, desc="distill", unit="step",
                   disable=not (env.is_main and s.progress), dynamic_ncols=True)
        tokens_per_step = self.plan.global_batch_size
        last = None
        while self.step < self.total_steps:
            start = time.perf_counter()
            record = self.train_step()
            record["seconds"] = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if env.is_main and (self.step % s.log_interval == 0 or self.step == 1 or self.step == self.total_steps):
                self.metrics.log({"event": "train", "step": self.step, **record,
                                  "records_per_s": tokens_per_step / record["seconds"]})
            if s.eval_interval and (self.step % s.eval_interval == 0 or self.step == self.total_steps):
                result = self.evaluate()
                if result and env.is_main:
                    self.metrics.log({"event": "eval", "step": self.step, **result})
                    bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
            if s.checkpoint_interval and self.step % s.checkpoint_interval == 0:
                self.save()
            last = record
        bar.close()
        summary = {"rank": env.rank, "steps": self.step, "skipped_steps": self.skipped_steps,
                   "global_batch_size": self.plan.global_batch_size, "world_size": env.world_size,
                   "last": last, "damaged_records": self.train_data.num_damaged}
        if env.is_main:
            from ..checkpoint import save_pretrained

            save_pretrained(self.student, self.out / "final")
            if self.uploader is not None:
                self.uploader.enqueue(self.out / "final")
                # Bounded: a dead endpoint delays the end of the run by at most this, and is reported.
                summary["push"] = self.uploader.close(timeout=PUSH_DRAIN_SECONDS)
                self.metrics.log({"event": "push", "step": self.step, **summary["push"]})
            self.metrics.close()
            if self.s.plot:
                plot_curves(read_jsonl(self.out / "metrics.jsonl"), self.out / "loss.png")
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        barrier(env)
        return summary

    def cleanup(self) -> None:
        """Tear down the process group and give the output directory up (safe after a failed setup)."""
        try:
            if hasattr(self, "env"):
                cleanup(self.env)
        finally:
            super().cleanup()


def run_distillation(settings: DistillSettings) -> dict[str, Any]:
    """Run a whole distillation (setup, train, cleanup) and return its summary."""
    return DistillationRecipe(settings).run()
