"""Each row's LoRA adapter, applied in a batch whose rows are grouped by adapter.

PEFT can mix adapters in one batch (the `adapter_names` forward argument), but
for every LoRA layer of every forward it registers hooks, rebuilds index lists
in Python, gathers each adapter's rows into a copy and scatters the result
back: on a small model on a CPU that costs more than the LoRA matmuls
themselves. Here the rows of a batch are kept grouped by adapter (batching.py
orders them), so each adapter's rows are one contiguous slice, and each LoRA
layer adds, per adapter present, `B(A(x[rows])) * scaling` to its output slice
in place: two small matmuls on a view, a multiply and an add (in fp32 when
the model is bf16: see `adapter_weights_in_float32`).

How: PEFT still loads, names and evicts the adapters, and its LoRA layers stay
in the model, switched off (each computes its base layer alone); a forward hook
on each adds the routed adapters' updates. A batch holding an adapter with LoRA
on layers other than Linear (embeddings, convolutions) runs through PEFT's own
mixed-batch forward instead. DoRA and PEFT's other LoRA variants can run
neither way (PEFT refuses them in mixed batches): `unsupported` names them, and
the engine refuses to load them (the service's training never makes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in adapter_names

Groups = list[tuple[str, int, int]]  # (adapter name, first row, end row), rows contiguous


def is_peft_model(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def adapter_groups(adapters: Sequence[str | None]) -> Groups:
    """Runs of equal adapters, base rows left out: [("A", 0, 3), ("B", 3, 5)]."""
    groups: Groups = []
    start = 0
    for position in range(1, len(adapters) + 1):
        if position == len(adapters) or adapters[position] != adapters[start]:
            if adapters[start] is not None:
                groups.append((adapters[start], start, position))
            start = position
    return groups


@dataclass
class _Router:
    """The hooks of one PeftModel and what the running forward routes."""

    layers: list = field(default_factory=list)  # PEFT lora.Linear modules carrying our hook
    switched: list = field(default_factory=list)  # every PEFT LoRA layer (switched off for routed forwards)
    peft_only: set[str] = field(default_factory=set)  # adapters only PEFT's own forward can run
    variants: set[str] = field(default_factory=set)  # adapters neither can run in a mixed batch (DoRA, ...)
    seen: tuple = ()  # the adapter names the lists above were made for
    groups: Groups | None = None  # set for the duration of a routed forward
    # q/k/v (and gate/up) get the same input tensor: cast to the LoRA dtype once for all of them.
    cast_of: tuple | None = None  # (input, its cast), for the running forward

    def refresh(self, model) -> None:
        names = tuple(model.peft_config)
        if names == self.seen:
            return
        from peft.tuners.lora.layer import Linear, LoraLayer

        hooked = {id(layer) for layer in self.layers}
        peft_only: set[str] = set()
        variants: set[str] = set()
        self.switched = []
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            self.switched.append(module)
            variants.update(module.lora_variant)  # DoRA and the other variants
            if type(module) is not Linear:
                peft_only.update(module.lora_A.keys(), module.lora_embedding_A.keys())
                continue
            if id(module) not in hooked:
                module.register_forward_hook(self._add_updates)
                self.layers.append(module)
                hooked.add(id(module))
        self.peft_only, self.variants = peft_only, variants
        self.seen = names
        for layer in self.layers:  # scaled weights of adapters no longer loaded go
            scaled = layer.__dict__.get(_SCALED_B)
            if scaled:
                for name in [name for name in scaled if name not in names]:
                    del scaled[name]

    def _add_updates(self, module, args, output):
        groups = self.groups
        if not groups:
            return None
        x = args[0]
        for name, start, end in groups:
            if name not in module.lora_A:  # this adapter leaves this layer alone
                continue
            lora_a = module.lora_A[name]
            source = x if x.dtype == lora_a.weight.dtype else self._cast(x, lora_a.weight.dtype)
            rows = source[start:end] if end - start < source.shape[0] else source
            weight, bias = _scaled_b(module, name)
            # What lora_B(lora_A(x)) * scaling computes (dropout is off in eval), without the module calls.
            update = F.linear(F.linear(rows, lora_a.weight), weight, bias)
            target = output[start:end] if end - start < output.shape[0] else output
            target += update  # computed in the wider dtype, rounded once into the output's
        return output

    def _cast(self, x, dtype):
        """x in `dtype`, converted once per forward however many layers read x."""
        if self.cast_of is not None and self.cast_of[0] is x and self.cast_of[1].dtype == dtype:
            return self.cast_of[1]
        cast = x.to(dtype)
        self.cast_of = (x, cast)
        return cast


_SCALED_B = "_tunehouse_scaled_b"


def _scaled_b(module, name: str):
    """lora_B's weight and bias times the adapter's scaling, made once: on a
    CPU each small operator of a decode step costs, and this saves one per
    LoRA layer and adapter."""
    scaled = module.__dict__.setdefault(_SCALED_B, {})
    lora_b, scaling = module.lora_B[name], module.scaling[name]
    kept = scaled.get(name)
    if kept is None or kept[0] is not lora_b.weight or kept[1] != lora_b.weight.data_ptr() or kept[2] != scaling:
        bias = None if lora_b.bias is None else lora_b.bias.detach() * scaling
        kept = scaled[name] = (lora_b.weight, lora_b.weight.data_ptr(), scaling, lora_b.weight.detach() * scaling, bias)
    return kept[3], kept[4]


def _router(model) -> _Router:
    router = model.__dict__.get("_tunehouse_lora_router")
    if router is None:
        router = _Router()
        model.__dict__["_tunehouse_lora_router"] = router
    router.refresh(model)
    return router


def forward_with_adapters(model, adapters: Sequence[str | None], **inputs):
    """model(**inputs) with row i using adapter adapters[i] (None: the base
    weights). Rows of one adapter must be contiguous. A PeftModel is left with
    its LoRA layers switched off (see `adapters_restored`)."""
    if not is_peft_model(model):
        if any(adapter is not None for adapter in adapters):
            raise ValueError("rows ask for adapters but the model has none")
        return model(**inputs)
    router = _router(model)
    groups = adapter_groups(adapters)
    if any(name in router.peft_only for name, _, _ in groups):
        # PEFT's own mixed batch: its layers on, our hooks idle.
        for layer in router.switched:
            if layer.disable_adapters:
                layer.enable_adapters(True)
        return model(**inputs, adapter_names=[adapter or BASE_ADAPTER for adapter in adapters])
    for layer in router.switched:
        if not layer.disable_adapters:
            layer.enable_adapters(False)
    router.groups = groups
    try:
        return model.get_base_model()(**inputs)
    finally:
        router.groups = router.cast_of = None


def unsupported(model, name: str) -> str | None:
    """Why adapter `name` on `model` cannot run in a mixed batch, or None."""
    if name in _router(model).variants:
        return "it is a LoRA variant (such as DoRA) that cannot share a batch with other adapters"
    return None


@contextmanager
def adapters_restored(model):
    """For a caller's own PeftModel: the LoRA layers that were switched on
    are on again afterwards, so the model behaves for its owner as before."""
    if not is_peft_model(model):
        yield
        return
    router = _router(model)
    enabled = [layer for layer in router.switched if not layer.disable_adapters]
    try:
        yield
    finally:
        for layer in enabled:
            if layer.disable_adapters:
                layer.enable_adapters(True)


def adapter_weights_in_float32(model) -> None:
    """LoRA weights in fp32, whatever the base's dtype (PEFT's default, made
    sure of): their matmuls are tiny, and on a CPU a tiny bf16 matmul costs
    ~10x a tiny fp32 one (oneDNN's fixed cost per call), while the rows'
    activations cast to fp32 cost little. The update is added to the layer's
    output in the output's dtype."""
    for name, parameter in model.named_parameters():
        if "lora_" in name and parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
