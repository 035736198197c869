"""The suite's models in transformers' Auto classes: one config class, one model class per Auto class."""

from __future__ import annotations

import importlib

import transformers

# Auto class -> (module, class): what `AutoModelForX.from_pretrained(run_dir)` builds for a suite run
AUTO_CLASSES = {
    "AutoModel": ("core.modeling", "SuiteModel"),
    "AutoModelForSequenceClassification": ("core.heads", "SuiteForSequenceClassification"),
    "AutoModelForImageClassification": ("core.heads", "SuiteForImageClassification"),
    "AutoModelForAudioClassification": ("core.heads", "SuiteForAudioClassification"),
    "AutoModelForCTC": ("core.heads", "SuiteForCTC"),
    "AutoModelForSeq2SeqLM": ("core.seq2seq", "SuiteForConditionalGeneration"),
    "AutoModelForTokenClassification": ("core.tagging", "SuiteForTokenClassification"),
    "AutoModelForTimeSeriesPrediction": ("core.forecaster", "SuiteForForecasting"),
}


def register_auto_classes() -> None:
    """Register the config under its model_type and each model class with its Auto class; `save_pretrained` then
    writes the matching `auto_map` into config.json and copies the modeling files beside the weights."""
    from core.modeling import SuiteConfig

    transformers.AutoConfig.register(SuiteConfig.model_type, SuiteConfig, exist_ok=True)
    SuiteConfig.register_for_auto_class("AutoConfig")
    for auto_name, (module, name) in AUTO_CLASSES.items():
        cls = getattr(importlib.import_module(module), name)
        getattr(transformers, auto_name).register(SuiteConfig, cls, exist_ok=True)
        cls.register_for_auto_class(auto_name)
