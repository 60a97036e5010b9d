"""clusterstream: streaming incremental clustering for cluster-recall recommendation."""

__version__ = "0.1.0"
