"""Hyperparameters of a fine-tuning job: the request's schema, and resolution.

Both run in the API process, so no torch/transformers here.

1. ``Hyperparameters`` is the request's ``hyperparameters`` object (OpenAI's
   three keys, plus our extensions under ``"extra"``), also used for OpenAI's
   ``method.supervised.hyperparameters``: every field typed with its range, so
   /openapi.json documents them and every copy is checked by the same rules.
   A bad value is refused with a message that says what is allowed, at its
   exact path, e.g. ``hyperparameters.extra.lora_r``. ``requested_values``
   flattens a validated object to the values the user set;
   ``parse_hyperparameters`` validates a raw object and does the same, raising
   ``HyperparameterError``.
2. ``resolve`` turns those values into a concrete value for every name in
   ``HYPERPARAMETER_NAMES``, each with its origin ("user", "auto", "default")
   and, for auto/default, a one-line reason. The worker calls it with the real
   token statistics; the API may call it with estimates from the upload report
   (``stats_from_report``) to preview a job.

The user documentation of every rule is docs/hyperparameters.md; keep the two
in step.
"""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from domain.errors import invalid_request, refusal, refusal_at

HYPERPARAMETER_NAMES: tuple[str, ...] = (
    "n_epochs",
    "batch_size",
    "learning_rate_multiplier",
    "learning_rate",
    "adapter",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "max_seq_length",
    "warmup_ratio",
    "lr_scheduler",
    "weight_decay",
    "gradient_accumulation_steps",
    "packing",
    "compute_dtype",
    "checkpoint_interval",
    "eval_interval",
)
# OpenAI's keys sit at the top of the hyperparameters object; ours under "extra".
OPENAI_NAMES: tuple[str, ...] = HYPERPARAMETER_NAMES[:3]
EXTRA_NAMES: tuple[str, ...] = HYPERPARAMETER_NAMES[3:]
EXTRA_KEY = "extra"
AUTO = "auto"
# Training methods (OpenAI's method.type) and the hyperparameters only one of them has.
METHODS = ("supervised", "dpo")
DPO_NAMES: tuple[str, ...] = ("beta",)

ADAPTERS = ("qlora", "lora", "full")  # full: every weight is trained, no adapter
COMPUTE_DTYPES = ("float32", "bfloat16")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
ALL_LINEAR = "all-linear"
MAX_INTERVAL = 1_000_000_000  # steps; any larger value would only mean "never"

# Auto rules (documented in docs/hyperparameters.md).
DEFAULT_EPOCHS = 3
TARGET_EXAMPLE_PASSES_MIN = 100     # OpenAI: at least ~100 example passes ...
TARGET_EXAMPLE_PASSES_MAX = 25_000  # ... and at most ~25,000
MAX_AUTO_EPOCHS = 25
BATCH_FRACTION = 0.002              # OpenAI-like: ~0.2% of the training examples
MAX_AUTO_BATCH = 64
BATCH_TOKEN_BUDGET = {"cuda": 16_384, "cpu": 8_192}
SEQ_LENGTH_MULTIPLE = 64
MAX_AUTO_SEQ_LENGTH = {"cuda": 8_192, "cpu": 4_096}
BASE_LEARNING_RATE = 2e-4           # the usual LoRA/QLoRA rate
DPO_BASE_LEARNING_RATE = 5e-5       # DPO starts from a model that already answers
DEFAULT_BETA = 0.1                  # the DPO paper's and TRL's default
INTERVALS_PER_RUN = 10

DEFAULTS: dict[str, tuple[Any, str]] = {
    "lora_r": (16, "LoRA rank 16: a common choice for LoRA on all linear layers"),
    "lora_dropout": (0.0, "no dropout, as the Unsloth + TRL SFTTrainer recipe sets it (\"supports any, "
                          "but 0 is optimized\"): the dropout masks took a fifth of a CPU step; set "
                          "0.05-0.1 to regularize a small data set"),
    "target_modules": (ALL_LINEAR, "LoRA on every linear layer of the model, as the QLoRA "
                                   "paper recommends"),
    "warmup_ratio": (0.03, "the first 3% of optimizer steps warm the learning rate up from 0"),
    "lr_scheduler": ("linear", "linear decay to 0 after warmup, the Hugging Face Trainer default"),
    "weight_decay": (0.0, "no weight decay, the Hugging Face Trainer default; adapters "
                          "rarely need it"),
    "gradient_accumulation_steps": (1, "the whole batch in one forward/backward pass; raise it "
                                       "to split the batch into micro-batches when memory is "
                                       "short"),
    "packing": (True, "padding-free batching: examples of a batch share rows with attention "
                      "kept inside each example; same math, less padding"),
}


class HyperparameterError(ValueError):
    """A bad hyperparameter: ``param`` is its path in the request, ``message`` says why."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable (Celery) despite the two-argument constructor
        return (type(self), (self.param, self.message))


@dataclass(frozen=True)
class DatasetStats:
    train_examples: int
    eval_examples: int
    token_length_p99: int   # tokens of a whole rendered example, before truncation
    token_length_max: int
    train_tokens: int       # sum over train examples, before truncation

    def __post_init__(self) -> None:
        for name in ("train_examples", "eval_examples", "token_length_p99", "token_length_max",
                     "train_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"DatasetStats.{name} must be a non-negative integer, got {value!r}")


# ---------------------------------------------------------------------------
# The request's schema
#
# Each field's type says what is allowed (and /openapi.json says it too); its
# wrap validator replaces pydantic's messages with one that names the field,
# says what is allowed and what was given. Types are strict: 3.0, "3" and true
# are not integers, NaN and Infinity are not numbers.

# The code of every refusal of a hyperparameter (the web UI shows it).
ERROR_CODE = "invalid_hyperparameters"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A value as the user wrote it in JSON, kept short."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(value: float) -> str:
    return f"{value:g}"  # 0 -> '0', 0.5 -> '0.5', 4096 -> '4096'


def _refused(message: str) -> PydanticCustomError:
    return refusal(message, code=ERROR_CODE)


def _bad_value(name: str, expected: str, value: Any, auto: bool) -> PydanticCustomError:
    if auto:
        expected = f'"{AUTO}" or {expected}'
    message = f"{name} must be {expected}, got {_show(value)}"
    if value == AUTO and not auto:
        message += f' ("{AUTO}" is not accepted for {name}; leave it out to get the default)'
    return _refused(message)


def _hyperparameter(allowed: Any, expected: str, description: str, *, auto: bool = False,
                    keep_int: bool = False) -> Any:
    """The type of a field: `allowed`, or "auto" when `auto`, or null (both
    mean "choose for me"). `expected` says `allowed` in words."""

    def explained(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        try:
            result = handler(value)
        except ValidationError:
            raise _bad_value(info.field_name, expected, value, auto) from None
        # A number given as a JSON integer stays one: the job shows 2, not 2.0.
        return value if keep_int and _is_int(value) else result

    if auto:
        expected_in_words = f'"{AUTO}" or {expected}'
        allowed = Union[Literal["auto"], allowed]
    else:
        expected_in_words = expected
    return Annotated[Optional[allowed], WrapValidator(explained),
                     Field(description=f"{description} Allowed: {expected_in_words}.")]


def _integer(low: int, high: int, description: str, *, auto: bool = False) -> Any:
    return _hyperparameter(Annotated[int, Field(strict=True, ge=low, le=high)],
                           f"an integer between {low} and {high}", description, auto=auto)


def _number(low: float, high: float, description: str, *, low_open: bool, high_open: bool = False,
            auto: bool = False) -> Any:
    if not low_open and not high_open:
        expected = f"a number between {_num(low)} and {_num(high)}"
    else:
        expected = (f"a number {'>' if low_open else '>='} {_num(low)} "
                    f"and {'<' if high_open else '<='} {_num(high)}")
    bounds = {"gt" if low_open else "ge": low, "lt" if high_open else "le": high}
    return _hyperparameter(Annotated[float, Field(strict=True, allow_inf_nan=False, **bounds)],
                           expected, description, auto=auto, keep_int=True)


def _choice(choices: tuple[str, ...], description: str, *, auto: bool = False) -> Any:
    return _hyperparameter(Literal[choices], "one of " + ", ".join(f'"{c}"' for c in choices),
                           description, auto=auto)


def _boolean(description: str) -> Any:
    return _hyperparameter(Annotated[bool, Field(strict=True)], "true or false", description)


_MODULES = f'"{ALL_LINEAR}" or a non-empty list of distinct module names such as ["q_proj", "v_proj"]'


def _target_modules(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    name = info.field_name
    if isinstance(value, list) and value:  # name the bad entry
        seen: set[str] = set()
        for index, module in enumerate(value):
            if not isinstance(module, str) or not module.strip():
                raise _refused(f"{name}[{index}] must be a non-empty module name such as \"q_proj\", "
                               f"got {_show(module)}")
            if module in seen:
                raise _refused(f"{name} lists {_show(module)} more than once")
            seen.add(module)
    try:
        return handler(value)
    except ValidationError:
        raise _bad_value(name, _MODULES, value, auto=False) from None


_ModuleNames = Annotated[list[Annotated[str, Field(strict=True, pattern=r"\S")]],
                         Field(min_length=1, json_schema_extra={"uniqueItems": True})]
_TargetModules = Annotated[Optional[Union[Literal["all-linear"], _ModuleNames]], WrapValidator(_target_modules),
                           Field(description=f"Which layers get LoRA adapters. Allowed: {_MODULES}.")]


def _unknown_key(keys: list[Any], known: tuple[str, ...], in_extra: bool) -> tuple[str, str] | None:
    """The first unknown key and the refusal's message, or None."""
    unknown = [str(key) for key in keys if key not in known]
    if not unknown:
        return None
    first = unknown[0]
    if not in_extra and first in EXTRA_NAMES:
        return first, (f'{first} is an extension: put it under "extra", '
                       f'e.g. {{"{EXTRA_KEY}": {{"{first}": ...}}}}')
    if first in DPO_NAMES:
        return first, (f'{first} is a DPO hyperparameter: give it in method.dpo.hyperparameters '
                       'of a job with method {"type": "dpo"}')
    if in_extra and first in OPENAI_NAMES:
        return first, f'{first} is an OpenAI hyperparameter: put it next to "extra", not inside it'
    names = ", ".join(f'"{key}"' for key in unknown)
    plural = "s" if len(unknown) > 1 else ""
    return first, (f"unknown hyperparameter{plural} {names}"
                   f"{' in extra' if in_extra else ''}; known: {', '.join(known)}")


class _HyperparameterObject(BaseModel):
    """An object of known keys: the others are refused by name, with a hint
    for the two easy mistakes (an extension at the top, an OpenAI key in extra)."""

    model_config = ConfigDict(extra="forbid")
    _name: ClassVar[str]
    _example: ClassVar[str]

    @model_validator(mode="wrap")
    @classmethod
    def _an_object_of_known_keys(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(value, cls):
            if not isinstance(value, Mapping):
                raise _refused(f"{cls._name} must be an object{cls._example}, got {_show(value)}")
            unknown = _unknown_key(list(value), tuple(cls.model_fields), in_extra=cls._name == EXTRA_KEY)
            if unknown is not None:
                key, message = unknown
                raise refusal_at((key,), message, code=ERROR_CODE, title=cls.__name__, input=value)
        return handler(value)


class ExtraHyperparameters(_HyperparameterObject):
    """tunehouse's hyperparameters, beside OpenAI's."""

    _name = EXTRA_KEY
    _example = ' such as {"lora_r": 8}'

    learning_rate: _number(0, 1, "The peak learning rate; overrides learning_rate_multiplier. "
                                 "Left out: 2e-4 x learning_rate_multiplier.", low_open=True) = None
    adapter: _choice(ADAPTERS, "What is trained: 4-bit QLoRA or LoRA adapters, or every weight "
                               "(full: fp32 on CPU, bf16 with a paged 8-bit optimizer on CUDA; no adapter, "
                               'the result is the whole model). "auto": qlora with CUDA, lora without.',
                      auto=True) = None
    lora_r: _integer(1, 512, "LoRA rank. Default 16.") = None
    lora_alpha: _number(0, 4096, "LoRA scaling. Default 2 x lora_r.", low_open=True) = None
    lora_dropout: _number(0, 1, "Dropout on the LoRA input. Default 0.", low_open=False,
                          high_open=True) = None
    target_modules: _TargetModules = None
    max_seq_length: _integer(16, 131_072, "Longest example in tokens (longer ones are truncated); at "
                                          "most the model's maximum length. "
                                          '"auto": from the examples\' token lengths.', auto=True) = None
    warmup_ratio: _number(0, 0.5, "Share of the optimizer steps that warm the learning rate up. "
                                  "Default 0.03.", low_open=False) = None
    lr_scheduler: _choice(LR_SCHEDULERS, 'Learning rate schedule after warmup. Default "linear".') = None
    weight_decay: _number(0, 1, "AdamW weight decay. Default 0.", low_open=False) = None
    gradient_accumulation_steps: _integer(1, 256, "Micro-batches per optimizer step; at most "
                                                  "batch_size. Default 1.") = None
    packing: _boolean("Padding-free batching. Default true.") = None
    compute_dtype: _choice(COMPUTE_DTYPES, "The dtype the matmuls compute in; adapter weights and "
                                           "optimizer state stay fp32. \"auto\": the faster one as "
                                           "the worker measures it (bf16 on CUDA).", auto=True) = None
    checkpoint_interval: _integer(1, MAX_INTERVAL, "Optimizer steps between checkpoints. "
                                                   '"auto": a tenth of the run.', auto=True) = None
    eval_interval: _integer(1, MAX_INTERVAL, "Optimizer steps between eval losses. "
                                             '"auto": a tenth of the run.', auto=True) = None


class Hyperparameters(_HyperparameterObject):
    """OpenAI's hyperparameters, and tunehouse's under `extra`. Left out,
    null and (where allowed) "auto" all mean "choose for me"; the job records
    every value with where it came from (docs/hyperparameters.md)."""

    _name = "hyperparameters"
    _example = ""

    n_epochs: _integer(1, 100, "Full passes over the training split. "
                               '"auto": from the number of training examples.', auto=True) = None
    batch_size: _integer(1, 256, "Examples per optimizer step; at most the training examples. "
                                 '"auto": ~0.2% of them, bounded by memory.', auto=True) = None
    learning_rate_multiplier: _number(0, 100, "Scales the base learning rate 2e-4. "
                                              '"auto": 1.', low_open=True, auto=True) = None
    extra: Optional[ExtraHyperparameters] = Field(default=None, description="tunehouse's hyperparameters.")

    @model_validator(mode="after")
    def _accumulation_fits_the_batch(self) -> "Hyperparameters":
        steps = self.extra.gradient_accumulation_steps if self.extra else None
        batch = self.batch_size
        if _is_int(steps) and _is_int(batch) and steps > batch:
            raise refusal_at(
                (EXTRA_KEY, "gradient_accumulation_steps"),
                f"gradient_accumulation_steps ({steps}) must not exceed batch_size ({batch}): "
                f"each optimizer step's {batch} examples are split into that many micro-batches",
                code=ERROR_CODE, title=type(self).__name__, input=steps)
        return self


class DpoHyperparameters(Hyperparameters):
    """OpenAI's DPO hyperparameters (method.dpo.hyperparameters): the
    supervised ones plus beta, and tunehouse's under `extra`."""

    beta: _number(0, 2, "How far the fine-tune may move from the reference model (the starting "
                        "weights): the DPO loss's temperature; lower lets it move further. "
                        '"auto": 0.1.', low_open=True, auto=True) = None


def hyperparameter_names(method: str = "supervised") -> tuple[str, ...]:
    """Every name a job of this method resolves, in order."""
    return HYPERPARAMETER_NAMES + DPO_NAMES if method == "dpo" else HYPERPARAMETER_NAMES


def _schema(method: str) -> type[Hyperparameters]:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return DpoHyperparameters if method == "dpo" else Hyperparameters


assert tuple(Hyperparameters.model_fields) == (*OPENAI_NAMES, EXTRA_KEY)
assert tuple(DpoHyperparameters.model_fields) == (*OPENAI_NAMES, EXTRA_KEY, *DPO_NAMES)
assert tuple(ExtraHyperparameters.model_fields) == EXTRA_NAMES


def param_path(name: str, param_prefix: str = "hyperparameters") -> str:
    """Where `name` sits in a request: 'hyperparameters.n_epochs', 'hyperparameters.extra.lora_r'."""
    if name in OPENAI_NAMES:
        return f"{param_prefix}.{name}"
    return f"{param_prefix}.{EXTRA_KEY}.{name}"


def requested_values(hyperparameters: Hyperparameters | None) -> dict[str, Any]:
    """The values the user set, flat (OpenAI keys and ``extra`` keys side by
    side) in HYPERPARAMETER_NAMES order: what a job stores and ``resolve``
    takes. "auto" and null mean "choose for me" and are left out."""
    if hyperparameters is None:
        return {}
    # The values as validated (not model_dump: a number given as an integer
    # stays one, which the serializer of a float field would warn about).
    flat = {name: getattr(hyperparameters, name) for name in hyperparameters.model_fields_set}
    extra = flat.pop(EXTRA_KEY, None)
    if extra is not None:
        flat.update({name: getattr(extra, name) for name in extra.model_fields_set})
    return {name: flat[name] for name in HYPERPARAMETER_NAMES + DPO_NAMES
            if flat.get(name) is not None and flat[name] != AUTO}


def parse_hyperparameters(raw: Any, *, param_prefix: str = "hyperparameters",
                          method: str = "supervised") -> dict[str, Any]:
    """Validate a hyperparameters object (None: nothing set); return
    ``requested_values`` of it. Raises HyperparameterError naming the bad
    parameter, its path under ``param_prefix``."""
    if raw is None:
        return {}
    try:
        return requested_values(_schema(method).model_validate(raw))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        error = invalid_request(first, location=(param_prefix, *first["loc"]))
        raise HyperparameterError(error.param, error.message) from None


def _validated(requested: Mapping[str, Any], param_prefix: str, method: str) -> dict[str, Any]:
    """A flat dict of requested values (a stored copy) checked again by the schema."""
    nested: dict[str, Any] = {key: value for key, value in requested.items() if key not in EXTRA_NAMES}
    extra = {key: value for key, value in requested.items() if key in EXTRA_NAMES}
    if extra:
        nested[EXTRA_KEY] = extra
    return parse_hyperparameters(nested, param_prefix=param_prefix, method=method)


# ---------------------------------------------------------------------------
# Resolution


def total_steps(n_epochs: int, batch_size: int, train_examples: int) -> int:
    """Optimizer steps of a run: n_epochs * ceil(train_examples / batch_size)."""
    if batch_size < 1 or n_epochs < 0 or train_examples < 0:
        raise ValueError(f"bad arguments: n_epochs={n_epochs}, batch_size={batch_size}, "
                         f"train_examples={train_examples}")
    return n_epochs * -(-train_examples // batch_size)


def _device_kind(device: str) -> str:
    kind = str(device).split(":", 1)[0]
    if kind not in BATCH_TOKEN_BUDGET:
        raise ValueError(f'device must be "cuda" or "cpu", got {device!r}')
    return kind


def _examples(count: int) -> str:
    return f"{count:,} training example{'' if count == 1 else 's'}"


def _auto_epochs(train: int) -> tuple[int, str]:
    passes = train * DEFAULT_EPOCHS
    if passes < TARGET_EXAMPLE_PASSES_MIN:
        needed = -(-TARGET_EXAMPLE_PASSES_MIN // train)
        epochs = min(MAX_AUTO_EPOCHS, needed)
        if epochs < needed:
            return epochs, (f"{_examples(train)}: raised from {DEFAULT_EPOCHS} to {epochs} epochs, "
                            f"the most auto picks (~100 example passes would need {needed})")
        return epochs, (f"{_examples(train)}: raised from {DEFAULT_EPOCHS} to {epochs} epochs "
                        "to reach ~100 example passes")
    if passes > TARGET_EXAMPLE_PASSES_MAX:
        epochs = max(1, TARGET_EXAMPLE_PASSES_MAX // train)
        if epochs == 1 and train > TARGET_EXAMPLE_PASSES_MAX:
            return epochs, (f"{_examples(train)}: lowered from {DEFAULT_EPOCHS} to 1 epoch; a "
                            "single epoch is already more than ~25,000 example passes")
        return epochs, (f"{_examples(train)}: lowered from {DEFAULT_EPOCHS} to {epochs} "
                        f"epoch{'s' if epochs > 1 else ''} to stay near ~25,000 example passes")
    return DEFAULT_EPOCHS, (f"{_examples(train)}: OpenAI's default of {DEFAULT_EPOCHS} epochs "
                            "(it changes only below 34 or above 8,333 examples)")


def _power_of_2_floor(value: int) -> int:
    return 1 << (max(1, value).bit_length() - 1)


def _auto_batch_size(train: int, max_seq_length: int, kind: str) -> tuple[int, str]:
    raw = BATCH_FRACTION * train
    target = 2 ** round(math.log2(max(1.0, raw)))
    budget = BATCH_TOKEN_BUDGET[kind]
    memory_cap = _power_of_2_floor(budget // max_seq_length)
    memory = (f"{budget}-token {kind.upper()} budget / max_seq_length {max_seq_length}, "
              "rounded down to a power of 2")
    value = min(target, memory_cap, MAX_AUTO_BATCH, train)
    reason = (f"0.2% of {_examples(train)} = {raw:g}, nearest power of 2 (at least 1): {target}; "
              f"memory cap {memory_cap} ({memory})")
    if value == target:
        pass
    elif value == memory_cap:
        reason += f"; capped at {value} by memory"
    elif value == MAX_AUTO_BATCH:
        reason += f"; capped at {value}, the most auto picks"
    else:
        reason += f"; capped at the {value} training examples"
    return value, reason


def _auto_max_seq_length(stats: DatasetStats, model_max_length: int, kind: str) -> tuple[int, str]:
    p99 = stats.token_length_p99
    rounded = max(SEQ_LENGTH_MULTIPLE, -(-p99 // SEQ_LENGTH_MULTIPLE) * SEQ_LENGTH_MULTIPLE)
    device_cap = MAX_AUTO_SEQ_LENGTH[kind]
    if model_max_length <= device_cap:
        cap, cap_name = model_max_length, f"the model's maximum length {model_max_length}"
    else:
        cap, cap_name = device_cap, f"the {kind.upper()} limit {device_cap}"
    value = min(rounded, cap)
    reason = (f"99th-percentile example length {p99} tokens, rounded up to a multiple of "
              f"{SEQ_LENGTH_MULTIPLE} (at least {SEQ_LENGTH_MULTIPLE}): {rounded}")
    if value < rounded:
        reason += f"; capped at {cap_name}"
    else:
        reason += f" (cap: {cap_name})"
    if stats.token_length_max > value:
        share = "about 1% of examples or fewer" if value >= p99 else "more than 1% of examples"
        reason += (f"; longest example has {stats.token_length_max} tokens; longer ones are "
                   f"truncated ({share})")
    else:
        reason += "; no example is truncated"
    return value, reason


def _round_rate(value: float) -> float:
    return float(f"{value:.12g}")  # 2e-4 * 3 -> 0.0006, not 0.0006000000000000001


def resolve(requested: dict[str, Any], stats: DatasetStats, *, model_max_length: int, device: str,
            param_prefix: str = "hyperparameters",
            measured_compute_dtype: tuple[str, str] | None = None,
            method: str = "supervised") -> dict[str, dict[str, Any]]:
    """Every hyperparameter's concrete value, origin and reason.

    ``requested`` is what ``requested_values`` returns, as a job stores it (it
    is checked again by the schema, so a stored copy is safe to pass). Returns ``{name: {"value", "origin", "reason"}}``
    for every name in HYPERPARAMETER_NAMES, in that order. User values pass through
    unchanged (reason None) unless they conflict with the data or the model, which
    raises HyperparameterError (paths use ``param_prefix``).

    ``measured_compute_dtype`` is the worker's measured choice, (dtype, reason)
    (worker/compute.py); without it (a preview in the API, which cannot
    measure) compute_dtype auto-resolves to the likely value, saying so.
    """
    if requested is None:
        requested = {}
    if not isinstance(requested, Mapping):
        raise HyperparameterError(param_prefix, f"hyperparameters must be an object, got {_show(requested)}")
    names = hyperparameter_names(method)
    unknown = [key for key in requested if key not in names]
    if unknown:
        raise HyperparameterError(f"{param_prefix}.{unknown[0]}",
                                  f"unknown hyperparameter {_show(unknown[0])}")
    user = _validated(requested, param_prefix, method)
    kind = _device_kind(device)
    if isinstance(model_max_length, float) and model_max_length >= 1:
        # Tokenizers without a limit report a huge float-ish sentinel (1e30).
        model_max_length = int(min(model_max_length, 2 ** 31))
    if not _is_int(model_max_length) or model_max_length < 1:
        raise ValueError(f"model_max_length must be a positive integer, got {model_max_length!r}")
    train = stats.train_examples
    if train < 1:
        raise HyperparameterError("training_file", "the training split has no examples; "
                                  "add examples without \"split\": \"TEST\"")

    out: dict[str, dict[str, Any]] = {}

    def put(name: str, value: Any, origin: str, reason: str | None) -> None:
        out[name] = {"value": value, "origin": origin, "reason": reason}

    def take_user(name: str) -> bool:
        if name in user:
            put(name, user[name], "user", None)
            return True
        return False

    def path(name: str) -> str:
        return param_path(name, param_prefix)

    if not take_user("n_epochs"):
        epochs, reason = _auto_epochs(train)
        put("n_epochs", epochs, "auto", reason)

    if not take_user("adapter"):
        if kind == "cuda":
            put("adapter", "qlora", "auto", "4-bit NF4 QLoRA: the CUDA default")
        else:
            put("adapter", "lora", "auto", "no CUDA: LoRA on full-precision weights; 4-bit on CPU is ~20x slower")

    if "max_seq_length" in user:
        if user["max_seq_length"] > model_max_length:
            raise HyperparameterError(
                path("max_seq_length"),
                f"max_seq_length {user['max_seq_length']} exceeds the model's maximum length "
                f"{model_max_length}")
        take_user("max_seq_length")
    else:
        length, reason = _auto_max_seq_length(stats, model_max_length, kind)
        put("max_seq_length", length, "auto", reason)
    max_seq_length = out["max_seq_length"]["value"]

    for name in ("lora_r", "lora_dropout", "target_modules", "warmup_ratio", "lr_scheduler",
                 "weight_decay", "gradient_accumulation_steps", "packing"):
        if not take_user(name):
            default, reason = DEFAULTS[name]
            put(name, default, "default", reason)
    if not take_user("compute_dtype"):
        if measured_compute_dtype is not None:
            measured, reason = measured_compute_dtype
            if measured not in COMPUTE_DTYPES:
                raise ValueError(f"measured compute dtype must be one of {COMPUTE_DTYPES}, got {measured!r}")
            put("compute_dtype", measured, "auto", reason)
        elif kind == "cuda":
            put("compute_dtype", "bfloat16", "auto",
                "bf16 on CUDA (fp32 on a GPU without bf16); the worker checks when the job starts")
        else:
            put("compute_dtype", "float32", "auto",
                "estimate: the worker measures fp32 and bf16 matmuls when the job starts and takes "
                "bf16 where this CPU computes it clearly faster")

    if not take_user("lora_alpha"):
        rank = out["lora_r"]["value"]
        put("lora_alpha", 2 * rank, "default", f"2 × lora_r ({rank}), a common LoRA scaling")

    # Learning rate: an explicit learning_rate wins over the multiplier.
    rate_set = "learning_rate" in user
    if not take_user("learning_rate_multiplier"):
        put("learning_rate_multiplier", 1.0, "auto",
            "OpenAI default; unused: learning_rate is set explicitly" if rate_set else "OpenAI default")
    multiplier = out["learning_rate_multiplier"]["value"]
    base_rate, base_words = (
        (DPO_BASE_LEARNING_RATE, "5e-5 (DPO's base rate: a quarter of SFT's, since it refines a model "
                                 "that already answers)")
        if method == "dpo" else (BASE_LEARNING_RATE, "2e-4 (the usual LoRA/QLoRA rate)"))
    if out["adapter"]["value"] == "full":
        base_rate, base_words = (
            base_rate / 10, f"{_round_rate(base_rate / 10):g} (a tenth of the adapters' rate: full "
                            "fine-tuning changes every weight)")
    from_multiplier = _round_rate(base_rate * multiplier)
    if rate_set:
        put("learning_rate", user["learning_rate"], "user",
            f"set explicitly; overrides learning_rate_multiplier {multiplier!r} "
            f"(which would give {from_multiplier:g})")
    else:
        put("learning_rate", from_multiplier, "auto", f"{base_words} × multiplier {multiplier!r}")

    # Batch size: examples per optimizer step.
    accumulation = out["gradient_accumulation_steps"]["value"]
    if "batch_size" in user:
        if user["batch_size"] > train:
            raise HyperparameterError(
                path("batch_size"),
                f"batch_size {user['batch_size']} is larger than the training split, which has "
                f"only {train} example{'' if train == 1 else 's'}")
        take_user("batch_size")
    else:
        value, reason = _auto_batch_size(train, max_seq_length, kind)
        if value < accumulation:
            if accumulation > train:
                raise HyperparameterError(
                    path("gradient_accumulation_steps"),
                    f"gradient_accumulation_steps {accumulation} is larger than the training "
                    f"split, which has only {train} example{'' if train == 1 else 's'}")
            value = accumulation
            reason += f"; raised to gradient_accumulation_steps: {value}"
        put("batch_size", value, "auto", reason)
    batch_size = out["batch_size"]["value"]
    if accumulation > batch_size:  # a user batch_size with a user accumulation passed above
        raise HyperparameterError(
            path("gradient_accumulation_steps"),
            f"gradient_accumulation_steps ({accumulation}) must not exceed batch_size ({batch_size})")

    steps = total_steps(out["n_epochs"]["value"], batch_size, train)
    interval = max(1, -(-steps // INTERVALS_PER_RUN))
    every = f"{steps} optimizer steps / {INTERVALS_PER_RUN}, rounded up: every {interval} step{'s' if interval > 1 else ''}"
    if not take_user("checkpoint_interval"):
        put("checkpoint_interval", interval, "auto",
            f"{every} (~{INTERVALS_PER_RUN} checkpoints), plus one at the end of each epoch")
    if not take_user("eval_interval"):
        if stats.eval_examples == 0:
            reason = f"{every}; but the eval split is empty: there is nothing to evaluate on"
        else:
            reason = f"{every} (~{INTERVALS_PER_RUN} evaluations on {stats.eval_examples} eval examples)"
        put("eval_interval", interval, "auto", reason)

    if method == "dpo" and not take_user("beta"):
        put("beta", DEFAULT_BETA, "auto", "0.1, the DPO paper's and TRL's default: the fine-tune's "
                                          "log-probability ratios to the reference are scaled by 0.1")

    return {name: out[name] for name in names}


def plain_values(resolved: dict[str, dict]) -> dict[str, Any]:
    """{name: value} of a resolve() result, same order."""
    return {name: entry["value"] for name, entry in resolved.items()}


def stats_from_report(report: dict) -> DatasetStats:
    """Estimated DatasetStats from an upload's validation report (FineTuneValidator).

    The report counts tokens by a rule of thumb (characters / 4 + 4 per message),
    not with the model's tokenizer, so this is only good for a preview; the worker
    resolves again with real counts.
    """
    split, tokens = report["split"], report["estimated_tokens"]
    train, examples = int(split["train"]), int(report["examples"])
    return DatasetStats(
        train_examples=train,
        eval_examples=int(split["test"]),
        # The report has no p99: the p95 of the estimates stands in for it.
        token_length_p99=int(tokens["p95"]),
        token_length_max=int(tokens["max"]),
        # Whole-file total scaled to the training share of the examples.
        train_tokens=round(tokens["total"] * train / examples) if examples else 0,
    )
