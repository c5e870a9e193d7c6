"""kakusan (拡散): glue shared by the entry points — run folders, manifests, W&B set-up, summaries."""
__version__ = "0.1.0"
