"""The trained network: a timm backbone plus the heads the two reports add.

``Net`` wraps ``timm.create_model(...)`` (from scratch) and, in training mode,
returns what the losses need in one forward pass:

- ``logits``: the classifier's logits (for an ArcFace head, ``s * cos(theta)``);
- ``embedding``: the pooled feature before the classifier (batch-hard triplet);
- ``cosine``: ``cos(theta)`` per class (ArcFace head only; the margin needs labels
  and is added by the loss);
- ``aux``: the auxiliary classifier's logits on an intermediate stage (2021 report).

In eval mode it returns one logits tensor, which is what validation, ``predict``,
TTA and ensembling consume: the classifier's logits, or, with auxiliary fusion
(``fusion_weight > 0``), ``log((1 - w) * softmax(logits) + w * softmax(aux))`` so
that a softmax downstream gives exactly the fused probabilities.
"""
from __future__ import annotations

import difflib
import math

import torch
import torch.nn.functional as F
from torch import nn

from fastvip.errors import FastvipError


def float32_head(head, x: torch.Tensor) -> torch.Tensor:
    """``head(x)`` in float32 whatever the autocast: bf16 logits (8-bit mantissa) tie the top
    two classes of about 1 % of val images, and a tie's argmax is the lower class index."""
    with torch.autocast(x.device.type, enabled=False):
        return head(x.float())


class ArcFaceHead(nn.Module):
    """Cosine classifier: normalized features times normalized class weights."""

    def __init__(self, in_features: int, num_classes: int, scale: float):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(in_features))

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        return float32_head(self._cosine, x)

    def _cosine(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class AuxHead(nn.Module):
    """Global average pool + dropout + linear classifier on an intermediate feature map."""

    def __init__(self, channels: int, num_classes: int, drop_rate: float):
        super().__init__()
        self.channels = channels
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        # some backbones (Swin) emit NHWC stage outputs
        dims = (1, 2) if fmap.shape[1] != self.channels and fmap.shape[-1] == self.channels else (2, 3)
        return float32_head(self.fc, self.drop(fmap.mean(dim=dims)))


class Net(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, *, arcface_scale: float | None = None,
                 aux_stage: int | None = None, drop_rate: float = 0.0, fusion_weight: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.fusion_weight = fusion_weight
        self.arcface = None
        if arcface_scale is not None:
            backbone.reset_classifier(0)
            dim = getattr(backbone, "head_hidden_size", None) or backbone.num_features
            self.arcface = ArcFaceHead(dim, num_classes, arcface_scale)
        self.aux = None
        self._aux_fmap = None
        if aux_stage is not None:
            info = backbone.feature_info
            if not -len(info) <= aux_stage < len(info):
                raise FastvipError(f"aux_stage {aux_stage} is out of range: the backbone has "
                                   f"{len(info)} stages")
            stage = info[aux_stage]
            self.aux = AuxHead(stage["num_chs"], num_classes, drop_rate)
            self.aux_module = stage["module"]
            # a bound method, so deep copies (EMA / Mean Teacher) hook their own copy
            dict(backbone.named_modules())[stage["module"]].register_forward_hook(self._keep_fmap)

    def _keep_fmap(self, module, args, output):
        self._aux_fmap = output

    def classifier_key(self) -> str:
        """State-dict prefix of the backbone's own linear classifier."""
        return "backbone." + self.backbone.pretrained_cfg.get("classifier", "fc")

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The heads' outputs (the dict above) in either mode. The Mean Teacher reads its
        ``logits`` here: fusion is an inference-time combination, not a training target."""
        features = self.backbone.forward_features(x)
        embedding = self.backbone.forward_head(features, pre_logits=True)
        out = {"embedding": embedding}
        if self.arcface is not None:
            out["cosine"] = self.arcface.cosine(embedding)
            out["logits"] = self.arcface.scale * out["cosine"]
        else:
            out["logits"] = float32_head(self.backbone.get_classifier(), embedding)
        if self.aux is not None:
            out["aux"] = self.aux(self._aux_fmap)
            self._aux_fmap = None
        return out

    def forward(self, x: torch.Tensor):
        out = self.outputs(x)
        if self.training:
            return out
        logits = out["logits"].float()
        if self.aux is not None and self.fusion_weight > 0:
            w = self.fusion_weight
            fused = (1 - w) * logits.softmax(dim=1) + w * out["aux"].float().softmax(dim=1)
            return fused.clamp_min(1e-12).log()
        return logits


def build_net(model: str, num_classes: int, *, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
              arcface_scale: float | None = None, aux_stage: int | None = None,
              fusion_weight: float = 0.0) -> Net:
    """``timm.create_model`` from scratch inside a :class:`Net` (one-line error for an unknown name)."""
    import timm
    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; close: {', '.join(close)}" if close else ""
        raise FastvipError(f"unknown timm model {model!r}{hint}")
    kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    backbone = timm.create_model(model, pretrained=False, num_classes=num_classes, drop_rate=drop_rate,
                                 **kwargs)
    return Net(backbone, num_classes, arcface_scale=arcface_scale, aux_stage=aux_stage,
               drop_rate=drop_rate, fusion_weight=fusion_weight)


def adapt_init_weights(net: Net, state: dict) -> tuple[dict, list[str]]:
    """Fit a checkpoint's weights to ``net`` for ``init_from`` (stage 2, fine-tunes).

    The backbone must match exactly. Heads may differ: a CE run's linear classifier
    initialises a new ArcFace head (same ``(classes, features)`` weight, then normalized
    by the head), and heads absent from the checkpoint (auxiliary classifier) start
    fresh. Returns the state to load (strictly) and the names of fresh head tensors.
    """
    own = net.state_dict()
    clf = net.classifier_key()
    state = dict(state)
    if net.arcface is not None and "arcface.weight" not in state and f"{clf}.weight" in state:
        state["arcface.weight"] = state.pop(f"{clf}.weight")
        state.pop(f"{clf}.bias", None)
    heads = ("arcface.", "aux.", clf + ".")
    fresh = [k for k in own if k not in state and k.startswith(heads)]
    missing = [k for k in own if k not in state and not k.startswith(heads)]
    extra = [k for k in state if k not in own and not k.startswith(heads)]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        what = "missing" if missing else "unexpected" if extra else "shape differs"
        raise FastvipError(f"the weights do not fit this model ({len(missing)} missing, {len(extra)} "
                           f"unexpected, {len(wrong)} of another shape; first: {first}, {what})")
    merged = {k: state.get(k, own[k]) for k in own}
    return merged, fresh
