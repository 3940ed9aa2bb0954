"""bort: an efficient-BERT suite — Bort distillation, sparse/learned/linear attention, on PyTorch."""
from .checkpoint import CheckpointError, load_pretrained, save_pretrained
from .config import BortConfig, ConfigError
from .model import (BortForMaskedLM, BortForMultipleChoice, BortForSequenceClassification, BortModel,
                    EncoderOutput, HeadOutput)

__version__ = "0.1.0"

__all__ = ["BortConfig", "BortForMaskedLM", "BortForMultipleChoice", "BortForSequenceClassification",
           "BortModel", "CheckpointError", "ConfigError", "EncoderOutput", "HeadOutput", "load_pretrained",
           "save_pretrained", "__version__"]
