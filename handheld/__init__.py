"""handheld: take Llama 3.2 class models onto phones and Arm boards with ExecuTorch."""

__version__ = "0.1.0"
