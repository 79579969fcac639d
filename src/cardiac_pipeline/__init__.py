"""cardiac-pipeline: few-shot LVEF prediction from echocardiogram videos (CardiacCLIP)."""

__version__ = "0.1.0"
