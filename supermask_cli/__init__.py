"""supermask: federated supermask fine-tuning of frozen pretrained transformers."""

__version__ = "0.1.0"
