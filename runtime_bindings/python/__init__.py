"""ExecuTorch's Python runtime (`--runner python`): a `.pte` program, and one measured run in a child process."""
