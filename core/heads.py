"""The shared heads on stem -> encoder: classification of a whole sequence (text, image or audio) and CTC.

Each head returns a transformers `ModelOutput` with `loss` when targets are given, so the training loop never knows
which task it runs, and `logits` as transformers' pipelines expect them. Imports: torch, transformers and the
suite's model files only (see modeling.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput

from .modeling import SuiteConfig, SuiteModel, SuitePreTrainedModel


def masked_mean(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of h (B, S, D) over the real positions of mask (B, S): (B, D)."""
    if mask is None:
        return h.mean(1)
    mask = mask[..., None].to(h.dtype)
    return (h * mask).sum(1) / mask.sum(1).clamp_min(1)


class ZeroLinear(nn.Linear):
    """A linear layer that starts at zero (timm, big_vision): every class starts at equal odds."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class Classifier(nn.Module):
    """timm's forward_head: pool -> dropout -> linear, shared by every classification head."""

    def __init__(self, config: SuiteConfig):
        super().__init__()
        p = config.dropout if config.classifier_dropout is None else config.classifier_dropout
        self.pooling, self.drop = config.pooling, nn.Dropout(p)
        self.linear = (ZeroLinear if config.zero_init_head else nn.Linear)(config.d_model, config.num_labels)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        pooled = h[:, 0] if self.pooling == "cls" else masked_mean(h, mask)  # (B, D)
        return self.linear(self.drop(pooled)).float()  # (B, num_labels), float32 even under autocast


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: SuiteConfig,
                        teacher_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on class ids (with label smoothing) or on soft targets (B, L) such as Mixup's; with
    `teacher_probs` also knowledge distillation (Hinton et al. 2015): (1 - a) CE + a T^2 KL(teachers_T || model_T)."""
    if labels.dim() == 2:  # soft targets (smoothing already in them)
        loss = torch.sum(-labels * logits.log_softmax(-1), dim=-1).mean()
    else:
        loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    if teacher_probs is not None:  # T^2 keeps the soft gradients' scale
        t, a = config.distill_temperature, config.distill_alpha
        soft = F.kl_div(F.log_softmax(logits / t, -1), teacher_probs, reduction="batchmean") * t * t
        loss = (1 - a) * loss + a * soft
    return loss


class SuiteForSequenceClassification(SuitePreTrainedModel):
    """Stem -> the shared encoder -> mean (or first-position) pooling -> dropout -> linear: one label per input."""

    pipeline_tag = "text-classification"

    def __init__(self, config: SuiteConfig):
        super().__init__(config)
        self.model = SuiteModel(config)
        self.classifier = Classifier(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None,
                input_features=None, labels=None, teacher_probs=None, **kwargs) -> SequenceClassifierOutput:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         pixel_values=pixel_values, input_features=input_features)
        logits = self.classifier(out.last_hidden_state, out.padding_mask)
        loss = None if labels is None else classification_loss(logits, labels, self.config, teacher_probs)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class SuiteForImageClassification(SuiteForSequenceClassification):
    """The classification head on the image stem (`AutoModelForImageClassification`, the image pipeline)."""

    pipeline_tag = "image-classification"

    main_input_name = "pixel_values"


class SuiteForAudioClassification(SuiteForSequenceClassification):
    """The classification head on the audio stem (`AutoModelForAudioClassification`)."""

    pipeline_tag = "audio-classification"

    main_input_name = "input_features"


class SuiteForCTC(SuitePreTrainedModel):
    """Audio stem -> the shared encoder -> linear scores over the characters (Graves et al. 2006); blank is
    `config.pad_token_id`, as in transformers' CTC models. Labels (B, L) are padded with -100."""

    pipeline_tag = "automatic-speech-recognition"

    main_input_name = "input_features"

    def __init__(self, config: SuiteConfig):
        super().__init__(config)
        self.model = SuiteModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)
        self.post_init()

    def forward(self, input_features=None, attention_mask=None, labels=None, **kwargs) -> CausalLMOutput:
        out = self.model(input_features=input_features, attention_mask=attention_mask)
        logits = self.lm_head(out.last_hidden_state).float()  # (B, S, V); CTC in float32
        loss = None
        if labels is not None:  # summed over each utterance, averaged over the batch (as ESPnet); an impossible
            # alignment (more labels than frames) contributes 0 instead of inf
            lengths = out.padding_mask.sum(1)
            targets = labels >= 0
            loss = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), labels[targets], lengths, targets.sum(1),
                              blank=self.config.pad_token_id, reduction="sum", zero_infinity=True) / len(logits)
        return CausalLMOutput(loss=loss, logits=logits)

    def output_lengths(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Frames of the logits of inputs with this attention mask (B, T)."""
        return self.model.stem.lengths(attention_mask.sum(1))
