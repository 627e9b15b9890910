"""peftport: portability of parameter-efficient finetuning (PEFT) modules between pretrained hosts."""

__version__ = "0.1.0"
