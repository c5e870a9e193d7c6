"""Plain nn.Module networks (no Lightning)."""
